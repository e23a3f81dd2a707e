from tests.harness import next_weekday


def test_book_and_clash(stack):
    res = stack.make_resource()
    start = next_weekday(1, 9)
    end = next_weekday(1, 11)
    first = stack.book("ada", res["id"], start, end)
    assert first.status_code == 201, first.get_json()
    clash = stack.book("bob", res["id"], next_weekday(1, 10), next_weekday(1, 12))
    assert clash.status_code == 409, clash.get_json()
    assert clash.get_json()["conflicts"] == [{"start": first.get_json()["start"], "end": first.get_json()["end"]}]
