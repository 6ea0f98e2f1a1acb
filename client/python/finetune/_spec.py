"""A JobSpec from keyword arguments, converted as `ftctl submit` converts its flags."""
import math
import os

from google.protobuf.descriptor import FieldDescriptor

from finetune.v1 import finetune_pb2 as pb

# ftctl's flag names (dashes as underscores) where they differ from the field's.
ALIASES = {
    "dataset": "dataset_uri",
    "weights": "weights_uri",
    "lr": "learning_rate",
    "grad_clip": "grad_clip_norm",
    "early_stopping": "early_stopping_patience",
    "export": "export_weights",
    "rotation": "rotation_degrees",
    "checkpoint_interval": "checkpoint_interval_seconds",
}
# Fields that take "all" for -1, as --freeze-depth does.
_FREEZE = {"freeze_depth", "finetune_freeze_depth"}
_INT32 = (-(1 << 31), (1 << 31) - 1)
_INTS = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64}


def _file_uri(path):
    return "file://" + os.path.abspath(os.fspath(path))


def _convert(key, field, value):
    """`value` as the field's Python type; TypeError or ValueError naming `key`."""
    if field.name == "dataset_uri" and (isinstance(value, os.PathLike) or
                                        (isinstance(value, str) and "://" not in value)):
        return _file_uri(value)  # a local path, as ftctl takes it
    if field.name == "weights_uri" and isinstance(value, os.PathLike):
        return _file_uri(value)
    if field.name in _FREEZE and value == "all":
        return -1
    if field.type == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise TypeError(f"{key} must be a string, got {value!r}")
        return value
    if field.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise TypeError(f"{key} must be True or False, got {value!r}")
        return value
    if field.type in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            extra = " or 'all'" if field.name in _FREEZE else ""
            raise TypeError(f"{key} must be an integer{extra}, got {value!r}")
        if field.type == FieldDescriptor.TYPE_INT32 and not _INT32[0] <= value <= _INT32[1]:
            raise ValueError(f"{key} is out of range for a 32-bit integer: {value}")
        return value
    if field.type == FieldDescriptor.TYPE_FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    raise TypeError(f"{key}: unsupported field type")  # JobSpec has no others


def build_spec(kwargs):
    """A JobSpec from submit()'s keyword arguments: JobSpec field names or ftctl's
    flag names (ALIASES); None leaves a field unset (the server's default)."""
    fields = pb.JobSpec.DESCRIPTOR.fields_by_name
    spec = pb.JobSpec()
    given = {}
    for key, value in kwargs.items():
        name = ALIASES.get(key, key)
        field = fields.get(name)
        if field is None:
            known = ", ".join(sorted(set(fields) | set(ALIASES)))
            raise TypeError(f"unknown JobSpec field '{key}'; known: {known}")
        if name in given:
            raise TypeError(f"'{given[name]}' and '{key}' both set JobSpec field {name}")
        given[name] = key
        if value is None:
            continue
        if field.label == FieldDescriptor.LABEL_REPEATED:  # mean, std
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError(f"{key} must be a sequence of numbers (R, G, B), got {value!r}")
            getattr(spec, name).extend(_convert(key, field, v) for v in value)
        else:
            setattr(spec, name, _convert(key, field, value))
    return spec
