"""Kubernetes manifests and container build files (issues 5 and 7).

Renders every overlay with `kubectl kustomize`, validates them with `kubernetes-validate --strict`
against current Kubernetes versions, checks the wiring between objects (selectors, names, claims,
settings) and the security posture, and lints both Dockerfiles with hadolint. The tools are
installed by `make test` (mk/containers.mk); a missing one fails the test (tests/conftest.py `tool`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tool

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "distributed", "single")
IMAGE_TAGS = {"cpu": ("cpu", "cpu"), "gpu": ("gpu", "gpu"), "distributed": ("milvus", "cpu"),  # serve, train
              "single": ("cpu", "cpu")}
SCALED = ("cpu", "gpu", "distributed")  # the overlays whose replica count an HPA owns
K8S_VERSIONS = ("1.30.0", "1.37.0")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}



def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


_rendered: dict[str, tuple[str, list[dict]]] = {}


def rendered(overlay: str) -> tuple[str, list[dict]]:
    if overlay not in _rendered:
        out = run([tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)])
        assert out.returncode == 0, out.stderr
        _rendered[overlay] = (out.stdout, [d for d in yaml.safe_load_all(out.stdout) if d])
    return _rendered[overlay]


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def pod_templates(docs: list[dict]) -> dict[str, dict]:
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            out[f"{d['kind']}/{d['metadata']['name']}"] = d["spec"]["template"]
        elif d["kind"] == "CronJob":
            out[f"CronJob/{d['metadata']['name']}"] = d["spec"]["jobTemplate"]["spec"]["template"]
    return out


# --------------------------------------------------------------------------- schema validation
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_validates_strictly(overlay: str, version: str, tmp_path: Path) -> None:
    text, docs = rendered(overlay)
    builtin = [d for d in docs if d["kind"] not in CRD_KINDS]
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    # the `kubectl kustomize ... | kubernetes-validate --strict -` pipeline of the issue
    out = run([tool("kubernetes-validate"), "--strict", "-k", version, "--quiet", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ERROR" not in out.stdout + out.stderr
    kinds = {d["kind"] for d in builtin}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
            "PersistentVolumeClaim", "CronJob", "ServiceAccount"} <= kinds
    assert ("HorizontalPodAutoscaler" in kinds) == (overlay in SCALED)


def test_strict_validation_catches_a_misspelled_field(tmp_path: Path) -> None:
    """Guards the check itself: --strict must reject unknown fields."""
    _, docs = rendered("cpu")
    deploy = find(docs, "Deployment", "qaembed-serve")
    deploy = yaml.safe_load(yaml.safe_dump(deploy))
    deploy["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/ready"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deploy))
    out = run([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSIONS[0], "--quiet", str(path)])
    assert out.returncode != 0 and "'paht' was unexpected" in out.stdout + out.stderr, out.stdout + out.stderr


def test_example_secret_is_valid_and_not_deployed(tmp_path: Path) -> None:
    example = K8S / "base" / "secret.example.yaml"
    out = run([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSIONS[0], "--quiet", str(example)])
    assert out.returncode == 0, out.stdout + out.stderr
    secret = yaml.safe_load(example.read_text())
    assert secret["stringData"] and all(v.startswith("CHANGE-ME") for v in secret["stringData"].values())
    for overlay in OVERLAYS:
        assert not [d for d in rendered(overlay)[1] if d["kind"] == "Secret"], "no secret may be rendered"


# --------------------------------------------------------------------------- wiring between objects
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_reference_each_other(overlay: str) -> None:
    _, docs = rendered(overlay)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"qaembed"}
    deploy = find(docs, "Deployment", "qaembed-serve")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()

    service = find(docs, "Service", "qaembed")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    assert service["spec"]["ports"] and {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    pdb = find(docs, "PodDisruptionBudget", "qaembed-serve")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    if overlay in SCALED:
        hpa = find(docs, "HorizontalPodAutoscaler", "qaembed-serve")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": "qaembed-serve"}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        # the HPA owns the replica count: a `replicas` here would reset it on every `kubectl apply -k`
        assert "replicas" not in deploy["spec"]
        minimum = hpa["spec"]["minReplicas"]
    else:
        minimum = deploy["spec"]["replicas"]
    # a node drain can always evict one pod, even at the minimum
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"]["minAvailable"] < minimum

    sm = find(docs, "ServiceMonitor", "qaembed")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"]
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert all(e["path"] == "/metrics" for e in sm["spec"]["endpoints"])
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]

    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert {"qaembed-registry", "qaembed-training-data"} <= claims
    for where, template in pod_templates(docs).items():
        spec = template["spec"]
        for c in spec["containers"]:
            for ref in c.get("envFrom", []):
                assert ref["configMapRef"]["name"] in configmaps, where
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, where
        mounted = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert mounted == {v["name"] for v in spec.get("volumes", [])}, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_restricted(overlay: str) -> None:
    """Pod Security Standard "restricted" + read-only root filesystem, for every pod template."""
    _, docs = rendered(overlay)
    ns = find(docs, "Namespace", "qaembed")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    templates = pod_templates(docs)
    assert set(templates) == {"Deployment/qaembed-serve", "CronJob/qaembed-train", "CronJob/qaembed-retrain"}
    for where, template in templates.items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] != 0, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], where
            assert c["resources"]["limits"]["memory"], where
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), where
            serve_tag, train_tag = IMAGE_TAGS[overlay]
            assert c["image"].endswith(":" + (serve_tag if "qaembed-serve" in c["image"] else train_tag)), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_probes_and_shutdown(overlay: str) -> None:
    _, docs = rendered(overlay)
    deploy = find(docs, "Deployment", "qaembed-serve")
    spec = deploy["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model load needs time"
    if overlay in SCALED:  # replicas keep serving while a rollout replaces them
        assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["terminationGracePeriodSeconds"] > 30, "must exceed the service's 30 s drain"
    registry = next(m for m in c["volumeMounts"] if m["mountPath"] == "/registry")
    assert registry["readOnly"] is True


def test_gpu_overlay_asks_for_gpus() -> None:
    _, docs = rendered("gpu")
    _, cpu_docs = rendered("cpu")
    for where, template in pod_templates(docs).items():
        spec = template["spec"]
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1", where
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), where
        assert spec["nodeSelector"], where
    for where, template in pod_templates(cpu_docs).items():
        assert "nvidia.com/gpu" not in template["spec"]["containers"][0]["resources"].get("limits", {}), where
        assert "tolerations" not in template["spec"], where
    deploy = find(docs, "Deployment", "qaembed-serve")
    cm_name = deploy["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    assert find(docs, "ConfigMap", cm_name)["data"]["QAEMBED_DEVICE"] == "cuda"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_configmap_is_valid_service_settings(overlay: str) -> None:
    """Every QAEMBED_* key the Deployment gets must be a real `python -m service` setting."""
    from service import settings

    _, docs = rendered(overlay)
    deploy = find(docs, "Deployment", "qaembed-serve")
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for ref in c["envFrom"]:
        env.update(find(docs, "ConfigMap", ref["configMapRef"]["name"])["data"])
    fields = {f.upper() for f in settings.Settings.__dataclass_fields__}
    for key in list(env) + [e["name"] for e in c["env"]]:
        assert key.startswith("QAEMBED_") and key[len("QAEMBED_"):] in fields, key
    built = settings.Settings.from_sources([], env=env)
    assert str(built.registry) == "/registry" and built.host == "0.0.0.0"
    # a misspelt variable stops the pod; Kubernetes' own QAEMBED_SERVICE_HOST & co. for the Service `qaembed` are off
    assert built.strict_env and deploy["spec"]["template"]["spec"]["enableServiceLinks"] is False
    with pytest.raises(settings.SettingsError, match=r"did you mean QAEMBED_API_KEY\?"):
        settings.Settings.from_sources([], env={**env, "QAEMBED_API_KEYS": "k"})
    assert built.port == c["ports"][0]["containerPort"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    if built.index == "milvus":  # stateless: no data dir, the Milvus token from a mounted Secret
        assert built.data_dir is None and str(built.milvus_token_file.parent) in mounts
    else:
        assert str(built.data_dir) in mounts


def test_distributed_overlay_is_stateless_and_shares_feedback() -> None:
    """Issue 7: replicas keep nothing in the pod, scale with the HPA, reach Milvus with a Secret; the
    retraining Job reads the feedback of all replicas (kept in Milvus) through the Service."""
    _, docs = rendered("distributed")
    deploy = find(docs, "Deployment", "qaembed-serve")
    spec = deploy["spec"]["template"]["spec"]
    writable = [v for v in spec["volumes"] if "emptyDir" in v or ("persistentVolumeClaim" in v
                                                                   and not v["persistentVolumeClaim"].get("readOnly"))]
    assert [v["name"] for v in writable] == ["tmp"], "no per-pod state beyond /tmp"
    token = next(v for v in spec["volumes"] if v["name"] == "milvus-token")
    assert token["secret"]["secretName"] == "qaembed-milvus"
    hpa = find(docs, "HorizontalPodAutoscaler", "qaembed-serve")
    assert 3 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    cm_name = spec["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    env = find(docs, "ConfigMap", cm_name)["data"]
    assert env["QAEMBED_INDEX"] == "milvus" and env["QAEMBED_MILVUS_URI"].startswith("http://milvus.milvus.svc")

    # GET /feedback/export on any replica reads the Milvus feedback collection: all replicas' feedback
    cron = find(docs, "CronJob", "qaembed-retrain")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    train = cron["containers"][0]
    train_env = find(docs, "ConfigMap", train["envFrom"][0]["configMapRef"]["name"])["data"]
    assert "--feedback_url=$(QAEMBED_FEEDBACK_URL)" in train.get("args", [])
    service = find(docs, "Service", "qaembed")["metadata"]
    assert train_env["QAEMBED_FEEDBACK_URL"].startswith(f"http://{service['name']}.{service['namespace']}.svc/")

    values = yaml.safe_load((K8S / "milvus-values.yaml").read_text())
    assert values["cluster"]["enabled"] is True and values["queryNode"]["replicas"] >= 2
    assert "authorizationEnabled: true" in values["extraConfigFiles"]["user.yaml"]


def test_single_overlay_keeps_state_on_a_volume() -> None:
    """The one writable replica: data dir on a ReadWriteOnce PVC, never two pods on it at once."""
    _, docs = rendered("single")
    deploy = find(docs, "Deployment", "qaembed-serve")
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    spec = deploy["spec"]["template"]["spec"]
    data = next(v for v in spec["volumes"] if v["name"] == "data")
    assert set(data) == {"name", "persistentVolumeClaim"}
    claim = find(docs, "PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "data")
    cm = find(docs, "ConfigMap", spec["containers"][0]["envFrom"][0]["configMapRef"]["name"])["data"]
    assert mount["mountPath"] == cm["QAEMBED_DATA_DIR"] and not mount.get("readOnly")
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]  # the volume is writable


def test_training_jobs_run_train_and_export() -> None:
    _, docs = rendered("cpu")
    jobs = {where: t for where, t in pod_templates(docs).items() if not where.startswith("Deployment")}
    assert set(jobs) == {"CronJob/qaembed-train", "CronJob/qaembed-retrain"}
    for template in jobs.values():
        c = template["spec"]["containers"][0]
        assert template["spec"]["restartPolicy"] == "Never"
        cm = find(docs, "ConfigMap", c["envFrom"][0]["configMapRef"]["name"])["data"]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert cm["QAEMBED_REGISTRY"] in mounts and not mounts[cm["QAEMBED_REGISTRY"]].get("readOnly")
        assert cm["QAEMBED_DATA_PATH"].startswith("/data") and mounts["/data"]["readOnly"]
        assert cm["HF_HOME"].startswith("/work") and "/work" in mounts
    cron = find(docs, "CronJob", "qaembed-retrain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    # neither trains on an empty data volume right after `kubectl apply`; training runs are Jobs created
    # from the suspended qaembed-train template (an applied Job would make later applies fail: immutable)
    assert cron["spec"]["suspend"] is True and find(docs, "CronJob", "qaembed-train")["spec"]["suspend"] is True
    assert not [d for d in docs if d["kind"] == "Job"]



@pytest.mark.parametrize("overlay", ["cpu", "gpu", "distributed"])
def test_retraining_cronjob_runs_the_promotion_gate_pipeline(overlay: str) -> None:
    """Issue 6: the CronJob trains on data + the service's feedback and promotes only through the gate."""
    _, docs = rendered(overlay)
    pod = find(docs, "CronJob", "qaembed-retrain")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    train = pod["containers"][0]
    assert train["command"][-3:] == ["python", "-m", "retrain"]
    args = dict(a.split("=", 1) for a in train["args"])
    # the image's command takes these flags (its --help, run from this checkout)
    python = train["command"].index("python")
    usage = run([sys.executable, *train["command"][python + 1:], "--help"], cwd=ROOT)
    assert usage.returncode == 0, usage.stderr
    assert not [flag for flag in args if not re.search(rf"{flag}\b", usage.stdout)], usage.stdout
    cm = find(docs, "ConfigMap", train["envFrom"][0]["configMapRef"]["name"])["data"]
    # every $(VAR) in the arguments is defined, so Kubernetes expands it instead of passing it literally
    for value in args.values():
        for var in re.findall(r"\$\((\w+)\)", value):
            assert var in cm or var in {e["name"] for e in train.get("env", [])}, var
    assert {"--registry", "--name", "--data", "--eval_data", "--feedback_url"} <= set(args)
    assert cm["QAEMBED_EVAL_DATA"] != cm["QAEMBED_DATA_PATH"]  # the fixed gate set is never the training data
    assert "--include_torch" in cm["QAEMBED_EXPORT_ARGS"]  # bundles carry weights to continue training from
    env = {e["name"]: e for e in train["env"]}
    assert env["QAEMBED_ADMIN_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "qaembed-api-keys",
                                                                          "key": "admin-api-key"}
    work = next(m for m in train["volumeMounts"] if m["mountPath"] == "/work")
    assert env["TMPDIR"]["value"] == work["mountPath"]  # the candidate's checkpoints don't fit the 2Gi /tmp

# --------------------------------------------------------------------------- images
@pytest.mark.parametrize("dockerfile", ["Dockerfile.serve", "Dockerfile.train"])
def test_hadolint(dockerfile: str) -> None:
    out = run([tool("hadolint"), str(ROOT / dockerfile)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_an_unpinned_image(tmp_path: Path) -> None:
    """Guards the check itself: hadolint must reject what the Dockerfiles avoid."""
    (tmp_path / "Dockerfile").write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    out = run([tool("hadolint"), "--no-color", str(tmp_path / "Dockerfile")], cwd=tmp_path)
    assert out.returncode != 0 and "DL3007" in out.stdout and "DL3008" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile.serve", "Dockerfile.train"])
def test_dockerfile_contract(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines.index(next(x for x in lines if x.startswith("ARG BASE_IMAGE="))) < lines.index(
        next(x for x in lines if x.startswith("FROM ")))
    assert all(x.startswith("FROM ${BASE_IMAGE}") for x in lines if x.startswith("FROM "))
    assert any(x.startswith("ARG PIP_CERT") for x in lines)
    users = [x for x in lines if x.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0") and "USER 10001:10001" in users[-1]
    entry = next(x for x in lines if x.startswith("ENTRYPOINT"))
    assert "tini" in entry
    if dockerfile == "Dockerfile.serve":
        assert any(x.startswith("HEALTHCHECK") for x in lines) and "/health" in text
        assert text.count("FROM ${BASE_IMAGE}") >= 2, "multi-stage"
        # base deps only, and the build itself fails if torch sneaks in
        assert "pip install ." in text and "'.[train]'" not in text and "import torch" in text
    else:
        assert "train-and-export" in entry and "'.[train]'" in text


def test_dockerignore_keeps_context_small() -> None:
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()
             if r.strip() and not r.startswith("#")]
    assert rules[0] == "*", "deny by default"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for dockerfile in ("Dockerfile.serve", "Dockerfile.train"):
        for line in (ROOT / dockerfile).read_text().splitlines():
            if line.startswith("COPY") and "--from=" not in line:
                copied |= {p.rstrip("/").split("/")[0] for p in line.split()[1:-1] if not p.startswith("--")}
    assert {"pyproject.toml", "training", "export", "service"} <= copied
    assert copied <= allowed, copied - allowed
    assert not {"examples", "models", "registry", ".venv", "tests"} & allowed


def test_train_and_export_cli(tmp_path: Path) -> None:
    script = ROOT / "docker" / "train-and-export"
    assert os.access(script, os.X_OK)
    out = run(["bash", str(script), "--help"])
    assert out.returncode == 0 and "Usage: train-and-export" in out.stdout
    assert run(["bash", str(script), "--no-such-flag"]).returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run(["bash", str(script), "--data", str(empty), "--registry", str(tmp_path / "r"),
               "--work-dir", str(tmp_path / "w")])
    assert out.returncode == 2 and "no training data" in out.stderr


def test_train_and_export_runs_both_stages(tmp_path: Path) -> None:
    """The script's wiring, with stub `python -m training` / `python -m export` on PATH."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$@" >> {tmp_path}/calls\n'
        'if [ "$2" = training ]; then while [ $# -gt 0 ]; do [ "$1" = --output_dir ] && mkdir -p "$2"; shift; done;\n'
        f'else echo exporting; echo {tmp_path}/reg/qaembed/v1; fi\n')
    (stub / "python").chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.json").write_text("[]")
    (data / "b.csv").write_text("")
    (data / "ignored.txt").write_text("")
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "QAEMBED_DATA_PATH": str(data),
           "QAEMBED_MODEL_NAME": "some/model"}
    out = run(["bash", str(ROOT / "docker" / "train-and-export"), "--registry", str(tmp_path / "reg"),
               "--work-dir", str(tmp_path / "w"), "--epochs", "1", "--", "--batch_size", "8"], env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"{tmp_path}/reg/qaembed/v1"
    train, export = (tmp_path / "calls").read_text().splitlines()
    assert train.startswith("-m training --preset turkish-bert --data_path ")
    assert f"{data}/a.json {data}/b.csv --output_dir" in train and "ignored" not in train
    assert "--model_name some/model --epochs 1 --batch_size 8" in train
    assert export.startswith("-m export --model_dir ") and "--registry " + str(tmp_path / "reg") in export
    assert "--name qaembed" in export and f"--eval_data {data}/a.json {data}/b.csv" in export
