"""Objects of two Kubernetes releases of the app beyond its Deployment and Service: release 1
has an Ingress; release 2 changes that Ingress (another host, a path more) and adds a ConfigMap.
Used to show that an undo puts back every object a release applied, not only the pod template."""

from __future__ import annotations

import copy

INGRESS_V1 = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "Ingress",
    "metadata": {"name": "architect-api", "annotations": {"example.com/tier": "one"}},
    "spec": {
        "rules": [
            {
                "host": "staging.example.com",
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "architect-api", "port": {"number": 443}}},
                        }
                    ]
                },
            }
        ]
    },
}
CONFIGMAP_V2 = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "architect-features"},
    "data": {"FEATURE_TAGS": "on"},
}


def ingress_v2() -> dict:
    """The release's Ingress: another host and a path more."""
    ingress = copy.deepcopy(INGRESS_V1)
    ingress["metadata"]["annotations"] = {"example.com/tier": "two"}
    rule = ingress["spec"]["rules"][0]
    rule["host"] = "v2.staging.example.com"
    extra = dict(rule["http"]["paths"][0], path="/api/v2")
    rule["http"]["paths"].append(extra)
    return ingress
