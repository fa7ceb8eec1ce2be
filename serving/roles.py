"""The roles a ``medgate serve`` node runs (``node.role``, ``--role``) and what each starts.

One machine runs every part (``all``, the default).  Several nodes sharing one PostgreSQL database
(``store.url``) and one Ray cluster (``ray.address``) each run some of them:

``gateway``
    DICOM in and out: the SCP, the study assembler, the imaging pipeline, the DICOMweb index
    worker, and the outbox that delivers the results.
``bridge``
    MQTT and HL7 v2 in: the vitals bridge (with its risk scorer and retention), the HL7 listener
    when ``hl7.port`` is set, and the outbox.
``models``
    Deploys the Ray Serve application (one deployment per model and the HTTP ingress deployment)
    on the Ray cluster; Ray places the model replicas by their ``num_cpus`` / ``num_gpus``.
``ingress``
    Hosts the HTTP ingress: the node's Ray offers the ingress replicas' custom resource
    (``http.ingress_resource``), so they and Ray Serve's HTTP proxy run there.

A node without ``models`` takes the model handles from the cluster.  :func:`components_for` is the
start plan :class:`serving.server.Server` follows.  Stdlib only.
"""
from __future__ import annotations

from enum import Enum
from typing import Iterable


class Role(str, Enum):
    GATEWAY = "gateway"
    BRIDGE = "bridge"
    INGRESS = "ingress"
    MODELS = "models"


#: ``node.role`` value for every role on this one node (today's single-machine server).
ALL = "all"
#: Every role, in the order they are listed and recorded.
ROLES = tuple(Role)


class Component(str, Enum):
    """What :class:`serving.server.Server` starts, one method each, in this order."""

    #: Start (or join) Ray and deploy the Serve application: model deployments and the ingress.
    MODELS = "models"
    #: Join the Ray cluster and take the deployed models' handles.
    MODEL_HANDLES = "model_handles"
    #: The vitals bridge (embedded broker when ``mqtt.url`` is null), risk scorer, retention, HL7 listener.
    BRIDGE = "bridge"
    #: The delivery outbox's worker.
    OUTBOX = "outbox"
    #: The imaging pipeline, the DICOMweb index worker, then the DICOM SCP and its assembler.
    GATEWAY = "gateway"
    #: The ingress replicas' node: its Ray offers their resource and the application runs.
    INGRESS = "ingress"


def parse_roles(value: str | Role | Iterable[str | Role]) -> frozenset[Role]:
    """``"all"``, one role or a comma list (``"gateway,bridge"``), or roles: the set of roles.

    Raises
    ------
    ValueError
        An unknown role, none at all, or ``all`` together with others; the message names the
        value given and the choices.
    """
    names = value.split(",") if isinstance(value, str) else [getattr(v, "value", v) for v in value]
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    choices = f"{ALL} or a comma list of {', '.join(r.value for r in ROLES)}"
    if not names:
        raise ValueError(f"must be {choices}, {value!r} is given")
    if ALL in names:
        if len(set(names)) > 1:
            raise ValueError(f"{ALL} already holds every role; give {ALL} alone or a list of roles, "
                             f"{value!r} is given")
        return frozenset(ROLES)
    unknown = [n for n in names if n not in {r.value for r in ROLES}]
    if unknown:
        raise ValueError(f"must be {choices}; {', '.join(map(repr, unknown))} is not a role")
    return frozenset(Role(n) for n in names)


def role_names(roles: Iterable[Role]) -> list[str]:
    """The roles' names in :data:`ROLES` order (as a node records them in the cluster table)."""
    given = set(roles)
    return [r.value for r in ROLES if r in given]


def is_all(roles: Iterable[Role]) -> bool:
    """True when ``roles`` is every role: the single-machine server."""
    return set(roles) == set(ROLES)


def components_for(roles: Iterable[Role]) -> tuple[Component, ...]:
    """What a node with ``roles`` starts, in start order.

    The models are deployed where the ``models`` role is, and every other node that calls them
    (the gateway's pipeline, the bridge's risk scorer) takes their handles from the cluster; the
    outbox runs wherever something enqueues (gateway, bridge).  The ingress replicas are part of
    the application the ``models`` role deploys; an ``ingress`` node hosts them.
    """
    roles = set(roles)
    plan: list[Component] = []
    if Role.MODELS in roles:
        plan.append(Component.MODELS)
    elif roles & {Role.GATEWAY, Role.BRIDGE}:
        plan.append(Component.MODEL_HANDLES)
    if Role.BRIDGE in roles:
        plan.append(Component.BRIDGE)
    if roles & {Role.GATEWAY, Role.BRIDGE}:
        plan.append(Component.OUTBOX)
    if Role.GATEWAY in roles:
        plan.append(Component.GATEWAY)
    if Role.INGRESS in roles:
        plan.append(Component.INGRESS)
    return tuple(plan)
