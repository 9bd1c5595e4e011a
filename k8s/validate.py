"""Validate every rendered object against the Kubernetes OpenAPI schemas (kubernetes-validate, offline).

Strict mode: unknown fields are errors. Each object is checked for every version in VERSIONS.
Objects whose kind has no schema there (custom resources: Argo, KFP, Prometheus Operator) only
produce a warning. Objects embedded as text (the Airflow chart's pod_template_file.yaml, the Pod of
every task) are validated too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from kubernetes_validate import utils as kv

from k8s.objects import Part, embedded_objects

VERSIONS = ("1.33", "1.35")

# kubernetes_validate.utils.validate() re-reads and re-parses the schema file and the large
# _definitions.json of the version on every call; they are read-only package data, so read each once
# (about 8x faster for the ~110 objects x 2 versions here).
if not hasattr(kv.schema_contents, "cache_info"):
    kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)


@dataclass
class Finding:
    part: str
    obj: str  # "Kind namespace/name"
    version: str
    message: str

    def __str__(self) -> str:
        return f"{self.part}: {self.obj} (Kubernetes {self.version}): {self.message}"


def validate_parts(
    parts: dict[str, Part], versions: tuple[str, ...] = VERSIONS, strict: bool = True
) -> tuple[list[Finding], list[Finding], int]:
    """(errors, warnings, number of objects checked per version)."""
    errors: list[Finding] = []
    warnings: list[Finding] = []
    count = 0
    for part in parts.values():
        objects = []
        for doc in part.docs:
            objects.append((part.label(doc), doc))
            objects.extend((f"Pod (in {label})", obj) for label, obj in embedded_objects(doc))
        count += len(objects)
        for label, obj in objects:
            if "apiVersion" not in obj or "kind" not in obj:
                errors.append(Finding(part.name, label, "-", "no apiVersion/kind"))
                continue
            unknown_kind = False
            for version in versions:
                try:
                    kv.validate(obj, version, strict=strict)
                except kv.ValidationError as exc:
                    path = ".".join(str(p) for p in exc.path) or "(top level)"
                    errors.append(Finding(part.name, label, version, f"{path}: {exc.message}"))
                except kv.SchemaNotFoundError:
                    if not unknown_kind:  # one warning per object, not per version
                        warnings.append(
                            Finding(
                                part.name,
                                label,
                                version,
                                f"no schema for {obj['apiVersion']} {obj['kind']} (custom resource): not validated",
                            )
                        )
                    unknown_kind = True
                except kv.InvalidSchemaError as exc:
                    errors.append(Finding(part.name, label, version, exc.message))
    return errors, warnings, count
