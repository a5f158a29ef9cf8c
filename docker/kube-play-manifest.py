"""Turn the rendered overlay into something `podman kube play` runs locally.

Keeps the serving Deployment, the ConfigMaps it uses and the registry PVC, unchanged except:
the image is the locally built one (never pulled), one replica, a hostPort for the http port,
and envFrom/env references to Secrets dropped (podman needs them to exist; they are optional).

    python docker/kube-play-manifest.py rendered.yaml --image localhost/qaembed-serve:cpu --host-port 18081 \
        [--part pvc|workload]

`--part pvc` prints only the PVC (played first: podman creates its volume, which can then be filled),
`--part workload` the ConfigMaps + Deployment.
"""

from __future__ import annotations

import argparse
import sys

import yaml


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--image", required=True)
    ap.add_argument("--host-port", type=int, required=True)
    ap.add_argument("--part", choices=("all", "pvc", "workload"), default="all")
    args = ap.parse_args()
    docs = [d for d in yaml.safe_load_all(open(args.rendered)) if d]
    deploy = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "qaembed-serve")
    spec = deploy["spec"]["template"]["spec"]
    deploy["spec"]["replicas"] = 1
    used_cms, used_pvcs = set(), set()
    for c in spec["containers"]:
        c["image"] = args.image
        c["imagePullPolicy"] = "Never"
        for p in c.get("ports", []):
            if p.get("name") == "http":
                p["hostPort"] = args.host_port
        c["env"] = [e for e in c.get("env", []) if "secretKeyRef" not in e.get("valueFrom", {})]
        used_cms |= {e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e}
    for v in spec.get("volumes", []):
        if "persistentVolumeClaim" in v:
            used_pvcs.add(v["persistentVolumeClaim"]["claimName"])
    pvcs = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] in used_pvcs]
    workload = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] in used_cms] + [deploy]
    out = {"pvc": pvcs, "workload": workload, "all": pvcs + workload}[args.part]
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
