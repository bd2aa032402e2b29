"""deploy/kubernetes/: every manifest validates offline, the PrometheusRule is the rules of prometheus/.

Kubernetes' own kinds are checked by kubernetes-validate (strict: unknown fields fail) against the
newest Kubernetes version it carries. ServiceMonitor, PodMonitor and PrometheusRule, for which
kubernetes-validate has no schema (it warns and passes), are checked against prometheus-operator's
own CRD schemas, vendored in tests/data/prometheus-operator-crds/. Kustomize files are checked for
what kustomize needs: their kind, and resources that exist.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

import gpuwatch

try:
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils
except ImportError:  # pragma: no cover - the test extras install it
    pytest.fail("kubernetes-validate is not installed: pip install -e '.[test]'", pytrace=False)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy/kubernetes"
CRDS = ROOT / "tests/data/prometheus-operator-crds"
KUBERNETES = kv_utils.latest_version()  # e.g. "1.37"
KUSTOMIZE = {"kustomize.config.k8s.io/v1beta1": "Kustomization", "kustomize.config.k8s.io/v1alpha1": "Component"}
PODRESOURCES_DIR = "/var/lib/kubelet/pod-resources"  # the kubelet's; the collectors default to its kubelet.sock


def manifests() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def closed(schema: object) -> object:
    """The schema with every object that lists its properties closed to others (strict field validation)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in CRDS.glob("*.json"):
        vendored = json.loads(path.read_text())
        schemas[(vendored["apiVersion"], vendored["kind"])] = closed(vendored["openAPIV3Schema"])
    return schemas


CRD_SCHEMAS = crd_schemas()


def problems(doc: dict, base: Path) -> list[str]:
    """What is wrong with one manifest document; empty when it validates."""
    api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    if KUSTOMIZE.get(api) == kind:
        missing = [r for r in doc.get("resources", []) if not (base / r).exists()]
        missing += [c for c in doc.get("components", []) if not (base / c / "kustomization.yaml").exists()]
        return [f"{kind} names missing {m}" for m in missing]
    if (api, kind) in CRD_SCHEMAS:
        validator = jsonschema.Draft7Validator(CRD_SCHEMAS[(api, kind)])
        found = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
        meta = doc.get("metadata", {})
        return found + [f"metadata.{key} missing" for key in ("name", "namespace") if key not in meta]
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    except kv_utils.SchemaNotFoundError:
        return [f"no schema for {api} {kind}: neither Kubernetes' nor a vendored CRD's"]
    return []


def test_kubernetes_validate_is_current():
    assert tuple(map(int, KUBERNETES.split("."))) >= (1, 33), KUBERNETES


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_validates(path):
    docs = documents(path)
    assert docs, f"{path} holds no manifest"
    for doc in docs:
        assert problems(doc, path.parent) == [], f"{path.name}: {doc.get('kind')}"


def test_the_kubernetes_validate_command_passes_every_file():
    # The command the issue names, as an operator would run it; it only warns on the CRD kinds,
    # which test_every_manifest_validates checks against their own schemas.
    command = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", f"{KUBERNETES}.0"]
    result = subprocess.run([*command, *map(str, manifests())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout


def test_the_validation_catches_mistakes():
    monitor = documents(DEPLOY / "servicemonitor.yaml")[0]
    typo = copy.deepcopy(monitor)
    typo["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("intervall" in p for p in problems(typo, DEPLOY))
    wrong = copy.deepcopy(monitor)
    wrong["spec"]["endpoints"][0]["interval"] = "often"
    assert problems(wrong, DEPLOY)
    daemonset = documents(DEPLOY / "daemonset.yaml")[0]
    bad = copy.deepcopy(daemonset)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystm"] = True
    assert problems(bad, DEPLOY)
    assert problems({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}}, DEPLOY)


def test_the_kustomization_applies_every_manifest_but_the_podmonitor():
    (kustomization,) = documents(DEPLOY / "kustomization.yaml")
    top = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    # podmonitor.yaml is the alternative to servicemonitor.yaml: both would scrape every pod twice
    assert set(kustomization["resources"]) == top - {"podmonitor.yaml"}


def test_the_prometheusrule_is_generated_from_the_rules_files():
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy/prometheusrule.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    generated = documents(DEPLOY / "prometheusrule.yaml")
    for key, source in (("alert", "alert-rules.yml"), ("record", "recording-rules.yml")):
        wanted = [
            rule[key]
            for group in yaml.safe_load((ROOT / "prometheus" / source).read_text())["groups"]
            for rule in group["rules"]
            if key in rule
        ]
        got = [
            rule[key] for doc in generated for group in doc["spec"]["groups"] for rule in group["rules"] if key in rule
        ]
        assert wanted and sorted(got) == sorted(wanted), key


def test_the_prometheusrule_groups_pass_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run installs it)")
    for doc in documents(DEPLOY / "prometheusrule.yaml"):
        rules = tmp_path / f"{doc['metadata']['name']}.yml"
        rules.write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
        result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_daemonset_holds_no_privilege_beyond_the_gpu_and_the_podresources_socket():
    (daemonset,) = documents(DEPLOY / "daemonset.yaml")
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["runtimeClassName"] == "nvidia"
    assert not any(pod.get(key) for key in ("hostPID", "hostNetwork", "hostIPC"))
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False and context["capabilities"] == {"drop": ["ALL"]}
    assert "nvidia.com/gpu" not in str(container["resources"])  # would take GPUs from the workloads
    assert set(container["resources"]) == {"requests", "limits"}
    host_paths = [v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v]
    assert host_paths == [PODRESOURCES_DIR]
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == PODRESOURCES_DIR]
    assert [m["readOnly"] for m in mounts] == [True]


def test_the_podresources_component_patches_the_daemonset_into_a_valid_one():
    (component,) = documents(DEPLOY / "components/podresources-as-root/kustomization.yaml")
    (daemonset,) = documents(DEPLOY / "daemonset.yaml")
    patched = copy.deepcopy(daemonset)
    for patch in component["patches"]:
        assert patch["target"]["kind"] == daemonset["kind"] and patch["target"]["name"] == daemonset["metadata"]["name"]
        for op in yaml.safe_load(patch["patch"]):
            assert op["op"] == "replace"
            *parents, leaf = op["path"].strip("/").split("/")
            node = patched
            for key in parents:
                node = node[key]
            assert leaf in node, f"{op['path']} is not in daemonset.yaml: the patch would fail"
            node[leaf] = op["value"]
    assert problems(patched, DEPLOY) == []
    context = patched["spec"]["template"]["spec"]["securityContext"]
    assert context["runAsUser"] == 0
    assert patched["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_the_image_is_this_version_and_its_user_is_the_pods():
    (daemonset,) = documents(DEPLOY / "daemonset.yaml")
    (kustomization,) = documents(DEPLOY / "kustomization.yaml")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == f"gpuwatch:{gpuwatch.__version__}"
    assert kustomization["images"] == [{"name": "gpuwatch", "newTag": gpuwatch.__version__}]
    dockerfile = (ROOT / "deploy/container/Dockerfile").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    context = pod["securityContext"]
    assert users[-1:] == [f"{context['runAsUser']}:{context['runAsGroup']}"]
    assert f"gpuwatch:{gpuwatch.__version__}" in dockerfile  # the build command it documents
