"""The small subset of kustomize that deploy/k8s uses, so tests render overlays without
a kustomize binary.

Supported in kustomization.yaml: `resources` (YAML files, or directories holding a
kustomization.yaml) and `patches` (strategic merge patches, given by `path` or inline
`patch`, whose target is the resource with the patch's kind and metadata.name). Any
other field raises UnsupportedError, so that a manifest using more of kustomize fails
here loudly instead of being rendered wrongly.

Strategic merge follows Kubernetes' rules for the fields we patch: maps merge key by
key, a null value deletes the key, lists of containers/volumes/volumeMounts/env merge
by `name` and container ports by `containerPort`; every other list is replaced whole
(as for atomic lists such as HPA `metrics` or `args`).
"""

import copy
import os

import yaml

_KNOWN_FIELDS = {"apiVersion", "kind", "resources", "patches"}

# List fields merged item by item, and the key that identifies an item.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "volumeMounts": "name",
    "env": "name",
    "imagePullSecrets": "name",
}


class UnsupportedError(Exception):
    """The kustomization uses something this renderer does not implement."""


def load_documents(path):
    """Returns the non-empty YAML documents of a file, in order."""
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _merge_key(field, items):
    if field in _MERGE_KEYS:
        return _MERGE_KEYS[field]
    if field == "ports" and items and all("containerPort" in p for p in items):
        return "containerPort"
    return None


def _merge_list(field, base, patch):
    key = _merge_key(field, patch)
    if key is None:
        return copy.deepcopy(patch)
    merged = copy.deepcopy(base)
    for item in patch:
        if key not in item:
            raise UnsupportedError(f"{field}: patch item without '{key}': {item}")
        for i, existing in enumerate(merged):
            if existing.get(key) == item[key]:
                merged[i] = strategic_merge(existing, item)
                break
        else:
            merged.append(copy.deepcopy(item))
    return merged


def strategic_merge(base, patch):
    """Returns `base` with the strategic merge patch `patch` applied (inputs untouched)."""
    merged = copy.deepcopy(base)
    for field, value in patch.items():
        if isinstance(field, str) and field.startswith("$"):
            raise UnsupportedError(f"patch directive {field} is not implemented")
        if value is None:
            merged.pop(field, None)
        elif isinstance(value, dict) and isinstance(merged.get(field), dict):
            merged[field] = strategic_merge(merged[field], value)
        elif isinstance(value, list) and isinstance(merged.get(field), list):
            merged[field] = _merge_list(field, merged[field], value)
        else:
            merged[field] = copy.deepcopy(value)
    return merged


def _identity(resource):
    return (resource.get("kind"), resource.get("metadata", {}).get("name"))


def build(directory):
    """Renders the kustomization in `directory` into a list of resource dicts."""
    kustomization = os.path.join(directory, "kustomization.yaml")
    docs = load_documents(kustomization)
    if len(docs) != 1:
        raise UnsupportedError(f"{kustomization}: expected one document")
    spec = docs[0]
    unknown = set(spec) - _KNOWN_FIELDS
    if unknown:
        raise UnsupportedError(f"{kustomization}: unsupported fields {sorted(unknown)}")

    resources = []
    for entry in spec.get("resources", []):
        path = os.path.normpath(os.path.join(directory, entry))
        if os.path.isdir(path):
            resources.extend(build(path))
        else:
            resources.extend(load_documents(path))
    identities = [_identity(r) for r in resources]
    duplicates = {i for i in identities if identities.count(i) > 1}
    if duplicates:
        raise UnsupportedError(f"{directory}: duplicate resources {sorted(duplicates)}")

    for entry in spec.get("patches", []):
        if set(entry) - {"path", "patch"} or len(entry) != 1:
            raise UnsupportedError(f"{kustomization}: patch entry {entry}: only path or patch")
        if "path" in entry:
            patch_docs = load_documents(os.path.join(directory, entry["path"]))
        else:
            patch_docs = [d for d in yaml.safe_load_all(entry["patch"]) if d is not None]
        for patch in patch_docs:
            target = _identity(patch)
            matches = [i for i, r in enumerate(resources) if _identity(r) == target]
            if len(matches) != 1:
                raise UnsupportedError(f"{directory}: patch target {target} not found")
            resources[matches[0]] = strategic_merge(resources[matches[0]], patch)
    return resources
