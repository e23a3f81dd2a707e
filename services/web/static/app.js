// labshare web: small enhancements; every page works without them.
(function () {
  "use strict";

  // Copy buttons: <button data-copy="#input-id" data-copied="Copied">
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    if (!button) return;
    var input = document.querySelector(button.getAttribute("data-copy"));
    if (!input) return;
    var label = button.textContent;
    var done = function () {
      button.textContent = button.getAttribute("data-copied") || label;
      setTimeout(function () { button.textContent = label; }, 2000);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, function () { input.select(); });
    } else {
      input.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selected for Ctrl-C */ }
    }
  });

  // Forms that ask first: <form data-confirm="Cancel this booking?">
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // "Select all" checkbox: <input type="checkbox" data-select-all="name">
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.matches || !box.matches("input[data-select-all]")) return;
    var boxes = box.form.querySelectorAll('input[type="checkbox"][name="' + box.getAttribute("data-select-all") + '"]');
    boxes.forEach(function (b) { b.checked = box.checked; });
  });

  // Read-only links select themselves on focus, ready to copy by hand.
  document.querySelectorAll(".copy-row input[readonly]").forEach(function (input) {
    input.addEventListener("focus", function () { input.select(); });
  });
})();
