"""How a model is served, as its folder declares it: read by the generic serving code.

A model folder (``<registry>/<name>/``) holds a ``serving.json`` beside its versions; a version's
``metadata.json`` may carry the same object under the key ``serving`` (it then wins, for that
version).  For example the ``tb`` chest X-ray classifier::

    {"input": "image", "preprocess": "models.transforms:to_model_input", "reply": "finding",
     "results": ["sr", "sc", "gsps", "fhir"], "uploads": ["dicom", "png", "jpeg"]}

* ``input`` (:class:`InputKind`): ``image`` (one 2D image: a DICOM instance, a PNG or a JPEG),
  ``volume`` (a whole CT series, sent by C-STORE or STOW-RS) or ``window`` (a ``(T, F)`` array of
  binned vital signs);
* ``preprocess``: ``"module:function"`` under the ``models`` package turning an uploaded image's
  pixels (2D grayscale, or H x W x 3 RGB for a 3-channel input) and the input side ``size_px`` into
  the model item (required when image uploads are accepted); DICOM studies are windowed by the
  gateway (:func:`dicom_gateway.pixels.model_input`);
* ``reply`` (:class:`ReplyFormat`): ``finding`` (one probability against ``threshold``),
  ``classes`` (multi-class probabilities, a class's operating point in ``operating_point``),
  ``candidates`` (volume candidates with a label mask) or ``risk`` (a deterioration score);
* ``results``: the result objects its findings become, among :data:`RESULT_OBJECTS` (TID 1500 SR,
  SEG, Secondary Capture overlay, Grayscale Softcopy Presentation State, FHIR DiagnosticReport);
* ``uploads``: what ``POST /v1/infer/<name>`` accepts, among :data:`UPLOAD_KINDS`;
* ``runner`` (:class:`RunnerKind`): ``stack`` (fixed-shape items stacked into batches) or ``volume``
  (one volume per call through ``entry``, ``"module:function"``, e.g.
  ``models.nodule.serving:serve_volume``).

Dotted references name functions of the ``models`` package only: a registry folder declares data,
it does not bring code of its own.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Iterable

#: The file in a model folder that declares how the model is served.
SPEC_FILE = "serving.json"
#: The key of a version's ``metadata.json`` that may declare it instead (for that version).
SPEC_KEY = "serving"
#: Result objects: TID 1500 SR (PS3.16), Segmentation (PS3.3 A.51), Secondary Capture overlay
#: (PS3.3 A.8), FHIR R4 DiagnosticReport with its Observations.
RESULT_OBJECTS = ("sr", "seg", "sc", "gsps", "fhir")
#: Uploads ``POST /v1/infer/<name>`` may accept: DICOM Part 10, PNG, JPEG images; a JSON body.
UPLOAD_KINDS = ("dicom", "png", "jpeg", "json")
IMAGE_UPLOADS = ("dicom", "png", "jpeg")
#: The package every dotted reference must lie in.
CODE_PACKAGE = "models"


class InputKind(str, Enum):
    IMAGE = "image"
    VOLUME = "volume"
    WINDOW = "window"


class ReplyFormat(str, Enum):
    FINDING = "finding"
    CLASSES = "classes"
    CANDIDATES = "candidates"
    RISK = "risk"


class RunnerKind(str, Enum):
    STACK = "stack"
    VOLUME = "volume"


def _enum(kind: type[Enum], name: str, value: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"`{name}` must be one of {[k.value for k in kind]}, {value!r} is given.") from None


def _choices(name: str, values: Iterable[str] | str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ValueError(f"`{name}` must be a list, {values!r} is given.")
    out = tuple(dict.fromkeys(str(v) for v in values))
    unknown = [v for v in out if v not in allowed]
    if unknown:
        raise ValueError(f"`{name}` must be among {list(allowed)}, {unknown} are given.")
    return out


def _check_reference(name: str, reference: str | None) -> None:
    if reference is None:
        return
    module, _, function = str(reference).partition(":")
    if not function or not (module == CODE_PACKAGE or module.startswith(CODE_PACKAGE + ".")):
        raise ValueError(f"`{name}` must be \"module:function\" with the module under the {CODE_PACKAGE!r} "
                         f"package, {reference!r} is given.")


@dataclass(frozen=True)
class ServingSpec:
    """How one model is served (see the module docstring); validated on construction.

    Raises
    ------
    ValueError
        Naming the field: an unknown kind, an image model accepting image uploads without
        ``preprocess``, a ``volume`` runner without ``entry``, uploads the input kind cannot take,
        a dotted reference outside the ``models`` package.
    """

    input: InputKind
    reply: ReplyFormat
    results: tuple[str, ...] = ()
    uploads: tuple[str, ...] = ()
    runner: RunnerKind = RunnerKind.STACK
    preprocess: str | None = None
    entry: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: the accepted str forms are converted once, here
        set_(self, "input", _enum(InputKind, "input", self.input))
        set_(self, "reply", _enum(ReplyFormat, "reply", self.reply))
        set_(self, "runner", _enum(RunnerKind, "runner", self.runner))
        set_(self, "results", _choices("results", self.results, RESULT_OBJECTS))
        set_(self, "uploads", _choices("uploads", self.uploads, UPLOAD_KINDS))
        _check_reference("preprocess", self.preprocess)
        _check_reference("entry", self.entry)
        images = [u for u in self.uploads if u in IMAGE_UPLOADS]
        if images and self.input is not InputKind.IMAGE:
            raise ValueError(f"`uploads` {images} need input \"image\", {self.input.value!r} is given.")
        if "json" in self.uploads and self.input is not InputKind.WINDOW:
            raise ValueError(f"`uploads` [\"json\"] needs input \"window\", {self.input.value!r} is given.")
        if images and self.preprocess is None:
            raise ValueError(f"`preprocess` is required to accept the uploads {images}.")
        if self.runner is RunnerKind.VOLUME and self.entry is None:
            raise ValueError("`entry` is required with runner \"volume\".")

    @classmethod
    def from_dict(cls, data: Any, where: str = "the serving spec") -> ServingSpec:
        """A spec from its JSON object; :class:`ValueError` names ``where`` and the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a JSON object, {type(data).__name__} is given.")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        missing = [k for k in ("input", "reply") if k not in data]
        if unknown or missing:
            raise ValueError(f"{where}: " + "; ".join(
                ([f"unknown key(s) {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])))
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (enums as their values); :meth:`from_dict` reads it back."""
        return {k: (v.value if isinstance(v, Enum) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}

    def accepts(self, upload: str) -> bool:
        """Whether ``POST /v1/infer`` takes an upload of this kind (:data:`UPLOAD_KINDS`)."""
        return upload in self.uploads

    def yields(self, result: str) -> bool:
        """Whether its findings become result object ``result`` (:data:`RESULT_OBJECTS`)."""
        return result in self.results

    def function(self, field_name: str) -> Callable[..., Any]:
        """The function a dotted reference field (``preprocess``, ``entry``) names, imported."""
        reference = getattr(self, field_name)
        if reference is None:
            raise ValueError(f"the serving spec names no `{field_name}`.")
        module, _, name = reference.partition(":")
        function = getattr(import_module(module), name, None)
        if not callable(function):
            raise ValueError(f"`{field_name}` {reference!r} is not a function of {module}.")
        return function


def load_spec(model_folder: Path, metadata: dict[str, Any] | None = None) -> ServingSpec:
    """The spec of the model in ``model_folder``: the version ``metadata``'s ``serving`` object when
    it has one, else the folder's ``serving.json``.

    Raises
    ------
    FileNotFoundError
        Neither declares one.
    ValueError
        The declaration is not valid JSON or not a valid spec (naming the file and the field).
    """
    if metadata is not None and SPEC_KEY in metadata:
        return ServingSpec.from_dict(metadata[SPEC_KEY], f"`{SPEC_KEY}` in the metadata of "
                                                         f"{metadata.get('name')} {metadata.get('version')}")
    path = Path(model_folder) / SPEC_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"model {Path(model_folder).name!r} declares no serving spec: no {path} and no "
                                f"`{SPEC_KEY}` key in its metadata.") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}.") from None
    return ServingSpec.from_dict(data, str(path))
