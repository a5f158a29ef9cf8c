"""The bundle format and registry (export.bundle read side, export.registry write side, export.cli management
commands): no model needed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from export import registry
from export.bundle import BundleError, latest_version, list_versions, open_bundle, sha256_file
from export.cli import main
from export.quantize import detect_int8_target
from export.registry import new_staging_dir, publish

ROOT = Path(__file__).resolve().parents[1]
FACTS = {"variants": {"onnx": {"file": "model.onnx"}, "int8": {"file": "model_int8.onnx"}},
         "tokenizer": "tokenizer.json", "dimension": 4, "max_seq_length": 16, "query_prompt": "query: "}


def _publish(root: Path, name: str = "demo", payload: bytes = b"graph", promote: bool = True) -> Path:
    staging = new_staging_dir(root, name)
    (staging / "model.onnx").write_bytes(payload)
    (staging / "model_int8.onnx").write_bytes(payload[:3])
    (staging / "tokenizer.json").write_text("{}")
    return publish(staging, dict(FACTS), promote=promote)


def _visible_state(root: Path, name: str = "demo") -> tuple[list[str], str]:
    return list_versions(root, name), open_bundle(root, name).version


def test_publish_and_open(tmp_path):
    first, second = _publish(tmp_path), _publish(tmp_path, payload=b"graph2")
    assert (first.name, second.name) == ("v0001", "v0002")
    bundle = open_bundle(tmp_path, "demo")
    assert (bundle.name, bundle.version, bundle.path) == ("demo", "v0002", second)
    assert bundle.variant_path("int8") == second / "model_int8.onnx"
    assert bundle.tokenizer_path == second / "tokenizer.json"
    assert (bundle.query_prompt, bundle.max_seq_length, bundle.dimension) == ("query: ", 16, 4)
    assert open_bundle(tmp_path, "demo", "v0001").variant_path("onnx").read_bytes() == b"graph"
    assert set(bundle.manifest["files"]) == {"model.onnx", "model_int8.onnx", "tokenizer.json"}
    assert bundle.manifest["created_at"]
    with pytest.raises(BundleError, match="no variant 'fp16'"):
        bundle.variant_path("fp16")


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda p: (p / "model_int8.onnx").write_bytes(b"gar"), "model_int8.onnx: sha256 mismatch"),
        (lambda p: (p / "model.onnx").write_bytes(b"graph!"), "model.onnx: size"),
        (lambda p: (p / "tokenizer.json").unlink(), "tokenizer.json: missing"),
        (lambda p: (p / "extra.onnx").write_bytes(b"x"), "extra.onnx: not listed"),
        (lambda p: (p / "manifest.json").write_text("{"), "manifest.json: unreadable"),
    ],
)
def test_tampered_bundle_refused_naming_the_file(tmp_path, tamper, message):
    tamper(_publish(tmp_path))
    with pytest.raises(BundleError, match=message):
        open_bundle(tmp_path, "demo")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("files", ["model.onnx"], "field 'files' must be an object, found list"),
        ("variants", "onnx", "field 'variants' must be an object, found str"),
        ("tokenizer", ["tokenizer.json"], "field 'tokenizer' must be a string, found list"),
        ("dimension", "4", "field 'dimension' must be an integer, found str"),
        ("files", {"model.onnx": "ab12"}, "files['model.onnx'] must be an object with a 'sha256' string and 'bytes'"),
        ("variants", {"onnx": ["model.onnx"]}, "variants['onnx'] must be an object with a 'file' string"),
    ],
)
def test_manifest_fields_of_the_wrong_type_are_refused(tmp_path, capsys, field, value, message):
    path = _publish(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest[field] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=re.escape(message)):
        open_bundle(tmp_path, "demo")
    assert main(["verify", str(path)]) == 1  # one error line, no AttributeError traceback
    assert capsys.readouterr().err == f"error: {path / 'manifest.json'}: {message}\n"


def test_manifest_cannot_point_outside_the_bundle(tmp_path):
    path = _publish(tmp_path)
    (tmp_path / "secret").write_text("x")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../../secret"] = {"sha256": sha256_file(tmp_path / "secret"), "bytes": 1}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="points outside the bundle"):
        open_bundle(tmp_path, "demo")


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "x" * 200, "a b", "/abs"])
def test_bad_names_refused(tmp_path, name):
    with pytest.raises(BundleError, match="invalid bundle name"):
        new_staging_dir(tmp_path, name)
    with pytest.raises(BundleError, match="invalid bundle name"):
        open_bundle(tmp_path, name)


@pytest.mark.parametrize("version", ["../v0001", "v1", "latest", "v0001/..", "0001"])
def test_bad_versions_refused(tmp_path, version):
    _publish(tmp_path)
    with pytest.raises(BundleError, match="invalid version"):
        open_bundle(tmp_path, "demo", version)


def test_tampered_latest_pointer_refused(tmp_path):
    _publish(tmp_path)
    (tmp_path / "demo" / "LATEST").write_text("../../etc\n")
    with pytest.raises(BundleError, match="invalid version"):
        open_bundle(tmp_path, "demo")


def test_nothing_published(tmp_path):
    with pytest.raises(BundleError, match="no published version of 'demo'"):
        open_bundle(tmp_path, "demo")


@pytest.mark.parametrize("step", ["fsync_tree", "write_durably", "fsync_dir", "_point_latest"])
def test_killed_publish_leaves_registry_consistent(tmp_path, monkeypatch, step):
    """A crash between any two publish steps leaves the old version (or, once renamed, the complete new
    one) visible through LATEST, every listed version verifies, and a later publish works."""
    _publish(tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(registry, step, crash)
        with pytest.raises(KeyboardInterrupt):
            _publish(tmp_path, payload=b"new graph")
    versions, latest = _visible_state(tmp_path)
    assert latest in ("v0001", "v0002")
    for version in versions:
        open_bundle(tmp_path, "demo", version)  # no half version is ever listed
    assert _publish(tmp_path, payload=b"third").name == f"v{len(versions) + 1:04d}"
    assert open_bundle(tmp_path, "demo").version == f"v{len(versions) + 1:04d}"


def test_promote_and_rollback(tmp_path):
    for payload in (b"one", b"two", b"three"):
        _publish(tmp_path, payload=payload)
    assert registry.set_latest(tmp_path, "demo", "v0001").version == "v0001"
    with pytest.raises(BundleError, match="no promoted version older than v0001"):
        registry.previous_version(tmp_path, "demo")
    registry.set_latest(tmp_path, "demo", "v0003")
    assert registry.previous_version(tmp_path, "demo") == "v0002"
    with pytest.raises(BundleError, match="v0009 of 'demo' does not exist"):
        registry.set_latest(tmp_path, "demo", "v0009")


def test_rollback_skips_candidates_that_were_never_promoted(tmp_path, capsys):
    _publish(tmp_path, payload=b"one")
    _publish(tmp_path, payload=b"two", promote=False)  # a candidate the retrain gate rejected
    _publish(tmp_path, payload=b"three")
    assert main(["rollback", "--registry", str(tmp_path), "--name", "demo"]) == 0
    assert capsys.readouterr().out.strip().endswith("v0001")
    assert latest_version(tmp_path, "demo") == "v0001"
    assert main(["rollback", "--registry", str(tmp_path), "--name", "demo"]) == 1
    assert "no promoted version older than v0001" in capsys.readouterr().err


def test_repeated_rollbacks_walk_back_through_promotions(tmp_path):
    for payload in (b"one", b"two", b"three"):
        _publish(tmp_path, payload=payload)
    assert registry.rollback(tmp_path, "demo").version == "v0002"
    assert registry.rollback(tmp_path, "demo").version == "v0001"
    registry.set_latest(tmp_path, "demo", "v0002")
    _publish(tmp_path, payload=b"four")
    assert registry.rollback(tmp_path, "demo").version == "v0002"  # v0003 was rolled back from: not a target
    registry.set_latest(tmp_path, "demo", "v0003")  # promoted again: a target again
    _publish(tmp_path, payload=b"five")
    assert registry.previous_version(tmp_path, "demo") == "v0003"  # v0004 was rolled back from


def test_a_history_line_torn_by_a_crash_does_not_swallow_the_next(tmp_path):
    for payload in (b"one", b"two", b"three"):
        _publish(tmp_path, payload=payload)
    assert registry.rollback(tmp_path, "demo").version == "v0002"
    history = tmp_path / "demo" / "HISTORY"
    history.write_bytes(history.read_bytes()[:-8])  # the rollback line, cut inside its time stamp
    _publish(tmp_path, payload=b"four")
    # both the torn rollback (v0003 is bad) and the promotion of v0004 still count
    assert registry.previous_version(tmp_path, "demo") == "v0002"


def test_rollback_in_a_registry_from_before_the_history(tmp_path):
    for payload, promote in ((b"one", True), (b"two", False), (b"three", True)):
        _publish(tmp_path, payload=payload, promote=promote)
    (tmp_path / "demo" / "HISTORY").unlink()
    assert registry.previous_version(tmp_path, "demo") == "v0002"  # nothing says v0002 was never promoted
    reports = tmp_path / "demo" / "reports"
    reports.mkdir()
    (reports / "v0002.json").write_text(json.dumps({"candidate": "v0002", "promoted": False}))
    assert registry.previous_version(tmp_path, "demo") == "v0001"
    _publish(tmp_path, payload=b"four")  # the history starts here, from v0003
    assert registry.rollback(tmp_path, "demo").version == "v0003"
    assert registry.rollback(tmp_path, "demo").version == "v0001"


def test_cli_management_commands(tmp_path, capsys):
    for payload in (b"one", b"two"):
        _publish(tmp_path, payload=payload)
    registry = str(tmp_path)
    assert main(["list", "--registry", registry]) == 0
    assert capsys.readouterr().out.splitlines() == ["demo\tv0001", "demo\tv0002\t*"]
    assert main(["rollback", "--registry", registry, "--name", "demo"]) == 0
    assert capsys.readouterr().out.strip().endswith("v0001")
    assert main(["promote", "--registry", registry, "--name", "demo", "--version", "v0002"]) == 0
    assert main(["show", "--registry", registry, "--name", "demo"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["version"] == "v0002"
    assert main(["verify", str(tmp_path / "demo" / "v0001")]) == 0
    (tmp_path / "demo" / "v0001" / "model.onnx").write_bytes(b"owe")
    assert main(["verify", str(tmp_path / "demo" / "v0001")]) == 1
    assert "v0001/model.onnx: sha256 mismatch" in capsys.readouterr().err
    assert main(["promote", "--registry", registry, "--name", "demo", "--version", "v0001"]) == 1
    assert main(["show", "--registry", registry, "--name", "../x"]) == 1


def test_cli_verify_exit_code_without_traceback(tmp_path):
    bad = _publish(tmp_path)
    (bad / "tokenizer.json").write_text("[]")
    result = subprocess.run([sys.executable, "-m", "export", "verify", str(bad)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    expected = f"error: {bad / 'tokenizer.json'}: sha256 mismatch, the file was modified or corrupted"
    assert result.stderr.strip() == expected


def test_bundle_imports_without_torch():
    code = ("import export, export.bundle, export.registry, export.fsutil, export.runtime, sys; "
            "heavy = {'torch', 'transformers', 'sentence_transformers', 'optimum'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.parametrize(
    "flags, machine, expected",
    [
        ({"avx2", "fma"}, "x86_64", "avx2"),
        ({"avx2", "avx512f", "avx512bw"}, "x86_64", "avx512"),
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86_64", "avx512_vnni"),
        ({"neon"}, "aarch64", "arm64"),
    ],
)
def test_int8_target_follows_cpu_flags(flags, machine, expected):
    assert detect_int8_target(flags=flags, machine=machine) == expected


def test_stale_staging_folders_of_killed_exports_are_swept(tmp_path):
    import os
    import time

    from export.registry import STALE_STAGING_S

    old = new_staging_dir(tmp_path, "demo")
    (old / "model.onnx").write_bytes(b"half written when the export was killed")
    past = time.time() - STALE_STAGING_S - 60
    for path in (old / "model.onnx", old):
        os.utime(path, (past, past))
    live = new_staging_dir(tmp_path, "demo")  # another export, still writing
    (live / "model.onnx").write_bytes(b"in progress")
    assert not old.exists() and live.exists()
    assert _publish(tmp_path).name == "v0001" and list_versions(tmp_path, "demo") == ["v0001"]
    assert live.exists()  # a fresh staging folder is never taken for stale


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_write_durably_leaves_old_or_new_content(tmp_path, monkeypatch, step):
    import os

    from export.fsutil import write_durably

    target = tmp_path / "LATEST"
    write_durably(target, "v0001\n")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(os, step, crash)
        with pytest.raises(KeyboardInterrupt):
            write_durably(target, b"v0002\n")
    assert target.read_text() == "v0001\n"
    assert [p.name for p in tmp_path.iterdir()] == ["LATEST"]  # no temp file left behind
    write_durably(target, b"v0002\n")
    assert target.read_bytes() == b"v0002\n"


GOOD_FUSION = {"alpha": 0.4, "method": "weighted", "chosen_on": "eval data: dev.jsonl (40 questions)",
               "analyzer": {"name": "tr", "stemmer": "prefix", "prefix_length": 5, "version": 1},
               "mrr@10_by_alpha": {"0.0": 0.5, "0.4": 0.6}}


@pytest.mark.parametrize(
    "fusion, message",
    [
        ({**GOOD_FUSION, "alpha": 1.5}, "fusion alpha must be a number in [0, 1], found 1.5"),
        ({**GOOD_FUSION, "alpha": "0.4"}, "fusion alpha must be a number in [0, 1], found '0.4'"),
        ({**GOOD_FUSION, "method": "rrf"}, "fusion method must be 'weighted', found 'rrf'"),
        ({k: v for k, v in GOOD_FUSION.items() if k != "analyzer"}, "field 'fusion' must be an object with"),
        (0.4, "field 'fusion' must be an object with"),
    ],
)
def test_manifest_fusion_is_validated(tmp_path, fusion, message):
    staging = new_staging_dir(tmp_path, "demo")
    for file in ("model.onnx", "model_int8.onnx", "tokenizer.json"):
        (staging / file).write_text("x")
    path = publish(staging, {**FACTS, "fusion": GOOD_FUSION})
    assert open_bundle(tmp_path, "demo").manifest["fusion"] == GOOD_FUSION
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["fusion"] = fusion
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=re.escape(message)):
        open_bundle(tmp_path, "demo")
