"""Write deploy/k8s/base/gateway-config.yaml: deploy/nginx.conf as the ConfigMap the in-cluster gateway mounts.

kustomize may not read files outside its directory, so the template is copied into the
ConfigMap; tests/deploy/test_k8s.py fails when the copy and deploy/nginx.conf differ.
After changing deploy/nginx.conf:

    python deploy/k8s/gateway_config.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE.parent / "nginx.conf"
OUT = HERE / "base" / "gateway-config.yaml"

HEADER = """\
# deploy/nginx.conf, the gateway's template, as the in-cluster gateway mounts it
# (/etc/nginx/templates/nginx.conf.template). Written by deploy/k8s/gateway_config.py:
# do not edit, change deploy/nginx.conf and run that script.
apiVersion: v1
kind: ConfigMap
metadata:
  name: labshare-gateway-template
  labels:
    app.kubernetes.io/name: labshare-gateway
    app.kubernetes.io/part-of: labshare
data:
  nginx.conf.template: |
"""


def render(template: str) -> str:
    """The ConfigMap's YAML, the template as a literal block (its text unchanged)."""
    if any(line != line.rstrip() for line in template.splitlines()):
        raise ValueError("the template has trailing whitespace, which a YAML literal block cannot keep")
    body = "".join(f"    {line}\n" if line else "\n" for line in template.rstrip("\n").splitlines())
    return HEADER + body


def main() -> int:
    OUT.write_text(render(TEMPLATE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {OUT.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
