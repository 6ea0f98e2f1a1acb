#!/usr/bin/python3
"""Writes the fixtures weights_test reads into the directory argv[1].

Good files come from torch.save itself (and a hand-written safetensors
writer, as the safetensors package is not installed); bad files are made by
editing good ones or by hand, with a minimal zip writer below, so each one
breaks exactly one rule.

Run with a Python that has torch and torchvision: /usr/bin/python3 here.
"""

import json
import os
import pickle
import random
import struct
import sys
import tarfile
import zipfile
import zlib

import torch
import torch.nn as nn
import torchvision

OUT = sys.argv[1]


def path(name):
    return os.path.join(OUT, name)


def write(name, data):
    with open(path(name), "wb") as f:
        f.write(data)


def zip_records(name):
    """(record name, bytes) of a zip, in central directory order."""
    with zipfile.ZipFile(path(name)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def write_zip(name, entries, zip64=False):
    """A stored-only zip; with zip64, zip64 extras in the central directory
    and a zip64 end record, as a writer does for files over 4 GiB."""
    out = bytearray()
    cd = bytearray()
    for record, data in entries:
        nb = record.encode()
        crc = zlib.crc32(data)
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc,
                           len(data), len(data), len(nb), 0) + nb + data
        if zip64:
            extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
            cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc,
                              0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(extra), 0, 0, 0, 0,
                              0xFFFFFFFF) + nb + extra
        else:
            cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, crc,
                              len(data), len(data), len(nb), 0, 0, 0, 0, 0, offset) + nb
    cd_offset = len(out)
    out += cd
    n = len(entries)
    if zip64:
        z64 = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(cd), cd_offset)
        out += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                           0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(cd), cd_offset, 0)
    write(name, bytes(out))


# --- hand-written pickles, protocol 2, as torch.save lays them out --------

def X(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def J(n):
    return b"J" + struct.pack("<i", n)


def U(s):
    """SHORT_BINSTRING: a str as Python 2 pickles it."""
    b = s.encode()
    return b"U" + bytes([len(b)]) + b


def rebuild(storage_type, key, numel, offset, size, stride, view=None, v1=False, S=X):
    """A tensor on a storage; `view` (pickled view_metadata, b"N" for None)
    makes the 6-tuple persistent id of the legacy format; `v1` calls
    _rebuild_tensor as torch before 0.4 did; `S` pickles the strings."""
    pid = (b"(" + S("storage") + b"ctorch\n" + storage_type.encode() + b"\n" + S(key)
           + S("cpu") + J(numel) + (view if view is not None else b"") + b"tQ")
    geometry = (J(offset) + b"(" + b"".join(J(x) for x in size) + b"t"
                + b"(" + b"".join(J(x) for x in stride) + b"t")
    if v1:
        return b"ctorch._utils\n_rebuild_tensor\n(" + pid + geometry + b"tR"
    return b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + geometry + b"\x89}tR"


def state_dict_pickle(items):
    return b"\x80\x02}(" + b"".join(X(k) + v for k, v in items) + b"u."


def checkpoint(name, pickle_bytes, records):
    write_zip(name, [("archive/data.pkl", pickle_bytes)]
              + [("archive/data/" + k, v) for k, v in records]
              + [("archive/version", b"3\n")])


def floats(*values):
    return struct.pack("<%df" % len(values), *values)


# --- the legacy format, written by hand ----------------------------------

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def legacy(name, state_pickle, keys, storages, version=1001, tail=b"", sys_info=None):
    """torch.save's legacy layout: magic, version, sys_info, the object, the
    storage keys, then (int64 element count, bytes) per storage."""
    if sys_info is None:
        sys_info = pickle.dumps({"protocol_version": 1001, "little_endian": True,
                                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    out = (pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(version, protocol=2)
           + sys_info + state_pickle + pickle.dumps(keys, protocol=2))
    for count, data in storages:
        out += struct.pack("<q", count) + data
    write(name, out + tail)


def legacy_storage_counts(name):
    """Where each storage's element count lies in a legacy file, and the count
    it must hold, for the test that makes them lie."""
    sizes = {"FloatStorage": 4, "LongStorage": 8}
    storages = {}

    class Dict(dict):  # takes BUILD's _metadata
        pass

    class Reader(pickle.Unpickler):
        def find_class(self, module, name):
            if name == "OrderedDict":
                return Dict
            return name if name in sizes else (lambda *args: args)

        def persistent_load(self, pid):
            storages[pid[2]] = (sizes[pid[1]], pid[4])

    with open(path(name), "rb") as f:
        for _ in range(3):
            pickle.load(f)
        Reader(f).load()
        keys = pickle.load(f)
        out = []
        for key in keys:
            size, numel = storages[key]
            out.append({"key": key, "offset": f.tell(), "numel": numel})
            assert struct.unpack("<q", f.read(8))[0] == numel
            f.seek(size * numel, 1)
        assert f.read() == b""
    return out


def legacy_one(name, numel=4, view=b"N", keys=("0",), storages=((4, floats(1, 2, 3, 4)),),
               **kwargs):
    """A legacy file of one tensor w = storage '0'[1:4], breaking what the
    arguments say."""
    legacy(name,
           state_dict_pickle([("w", rebuild("FloatStorage", "0", numel, 1, [3], [1], view=view))]),
           list(keys), list(storages), **kwargs)


# --- safetensors, written by hand ----------------------------------------

ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
             torch.uint8: "U8", torch.bool: "BOOL"}


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def safetensors_bytes(header, data):
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def write_safetensors(name, tensors):
    header = {"__metadata__": {"format": "pt"}}
    data = bytearray()
    for key, t in tensors.items():
        b = tensor_bytes(t)
        header[key] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                       "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    write(name, safetensors_bytes(header, bytes(data)))


def describe(t):
    """What the C++ test checks a tensor against."""
    return {"dtype": str(t.dtype), "shape": list(t.shape),
            "values": t.detach().double().flatten().tolist()}


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)

    # ResNet-18 with non-trivial BatchNorm statistics (one training step).
    model = torchvision.models.resnet18()
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    sd = model.state_dict()
    torch.save(sd, path("resnet18.pt"))
    torch.save(sd, path("resnet18_legacy.pt"), _use_new_zipfile_serialization=False)
    write_safetensors("resnet18.safetensors", sd)
    manifest = [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape),
                 "sum": v.double().sum().item(), "first": v.flatten()[0].item()}
                for k, v in sd.items()]
    with open(path("resnet18.json"), "w") as f:
        json.dump(manifest, f)
    for k in ("conv1.weight", "bn1.running_var", "fc.bias"):
        write(k + ".bin", sd[k].numpy().astype("<f4").tobytes())
    with open(path("resnet18.pt"), "rb") as f:
        whole = f.read()
    write("truncated.pt", whole[: len(whole) * 6 // 10])

    # Every dtype and view kind torch.save can put in a state_dict.
    base = torch.arange(10.0)
    misc = {
        "transposed": torch.arange(6.0).reshape(2, 3).t(),
        "half": torch.tensor([1.5, -2.0, 65504.0], dtype=torch.float16),
        "bf16": torch.tensor([1.0, -0.5, 3.0], dtype=torch.bfloat16),
        "bool": torch.tensor([True, False, True]),
        "int64": torch.tensor([-(2 ** 40), 7]),
        "int32": torch.tensor([-3, 2 ** 31 - 1], dtype=torch.int32),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "int8": torch.tensor([-128, 127], dtype=torch.int8),
        "float64": torch.tensor([0.1, -1e300], dtype=torch.float64),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
        "base": base,
        "offset_view": base[2:5],
        "strided": torch.arange(12.0).reshape(3, 4)[:, ::2],
        "expanded": torch.tensor([2.5]).expand(3),
        "param": nn.Parameter(torch.ones(2)),
    }
    torch.save(misc, path("misc.pt"))
    torch.save(misc, path("misc_p4.pt"), pickle_protocol=4)
    torch.save(misc, path("misc_legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save(misc, path("misc_legacy_p4.pt"), _use_new_zipfile_serialization=False,
               pickle_protocol=4)
    write_zip("misc_zip64.pt", zip_records("misc.pt"), zip64=True)
    with zipfile.ZipFile(path("misc_zip64.pt")) as z:  # Python agrees it is a valid zip
        assert z.testzip() is None
    with open(path("misc.json"), "w") as f:
        json.dump({k: describe(v) for k, v in misc.items()}, f)

    # A small model for the fuzz loops, and its records for re-zipping.
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 3))
    small_sd = small.state_dict()
    torch.save(small_sd, path("small.pt"))
    torch.save(small_sd, path("small_legacy.pt"), _use_new_zipfile_serialization=False)
    with open(path("small_legacy.json"), "w") as f:
        json.dump(legacy_storage_counts("small_legacy.pt"), f)
    for record, data in zip_records("small.pt"):
        os.makedirs(os.path.dirname(path(os.path.join("small_parts", record))), exist_ok=True)
        write(os.path.join("small_parts", record), data)

    # --- files that must be rejected ---
    rng = random.Random(0)
    write("random.bin", bytes(rng.randrange(256) for _ in range(4096)))
    torch.save(small, path("legacy_module.pt"), _use_new_zipfile_serialization=False)
    write("plain_pickle.pt", pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    with tarfile.open(path("tar_format.pt"), "w") as tar:  # the layout before the legacy one
        tar.add(path("random.bin"), arcname="storages")
    torch.save({"model": small_sd, "epoch": 3}, path("not_state_dict.pt"))
    torch.jit.save(torch.jit.script(small), path("torchscript.pt"))
    with zipfile.ZipFile(path("compressed.pt"), "w", zipfile.ZIP_DEFLATED) as z:
        for record, data in zip_records("small.pt"):
            z.writestr(record, data)

    # The central directory claims 2 GiB for data/0 of small.pt.
    small_bytes = bytearray(open(path("small.pt"), "rb").read())
    cd_offset = struct.unpack_from("<I", small_bytes, len(small_bytes) - 6)[0]
    pos = cd_offset
    while struct.unpack_from("<I", small_bytes, pos)[0] == 0x02014B50:
        nlen, elen, clen = struct.unpack_from("<HHH", small_bytes, pos + 28)
        if small_bytes[pos + 46: pos + 46 + nlen].endswith(b"/data/0"):
            struct.pack_into("<II", small_bytes, pos + 20, 0x7FFFFFF0, 0x7FFFFFF0)
        pos += 46 + nlen + elen + clen
    write("lying_size.pt", bytes(small_bytes))

    # One flipped bit in a tensor record.
    with zipfile.ZipFile(path("small.pt")) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    bad = bytearray(open(path("small.pt"), "rb").read())
    nlen, elen = struct.unpack_from("<HH", bad, info.header_offset + 26)
    bad[info.header_offset + 30 + nlen + elen] ^= 0x01
    write("bad_crc.pt", bytes(bad))

    # Hand-written pickles: one good (torch.load must agree), each other
    # breaking one rule.
    checkpoint("handmade.pt",
               state_dict_pickle([("w", rebuild("FloatStorage", "0", 4, 1, [3], [1]))]),
               [("0", floats(1, 2, 3, 4))])
    assert torch.load(path("handmade.pt"))["w"].tolist() == [2.0, 3.0, 4.0]
    checkpoint("forbidden.pt",
               b"\x80\x02cos\nsystem\n" + X("echo pwned") + b"\x85R.", [])
    checkpoint("oob_view.pt",
               state_dict_pickle([("w", rebuild("FloatStorage", "0", 4, 0, [10], [1]))]),
               [("0", floats(1, 2, 3, 4))])
    checkpoint("oob_stride.pt",
               state_dict_pickle([("w", rebuild("FloatStorage", "0", 4, 0, [2, 2], [3, 1]))]),
               [("0", floats(1, 2, 3, 4))])
    checkpoint("big_numel.pt",
               state_dict_pickle([("w", rebuild("FloatStorage", "0", 1000, 0, [4], [1]))]),
               [("0", floats(1, 2, 3, 4))])
    checkpoint("missing_record.pt",
               state_dict_pickle([("w", rebuild("FloatStorage", "7", 4, 0, [4], [1]))]),
               [("0", floats(1, 2, 3, 4))])
    checkpoint("negative_stride.pt",
               state_dict_pickle([("w", rebuild("FloatStorage", "0", 4, 3, [4], [-1]))]),
               [("0", floats(1, 2, 3, 4))])
    checkpoint("bad_bool.pt",
               state_dict_pickle([("w", rebuild("BoolStorage", "0", 2, 0, [2], [1]))]),
               [("0", b"\x01\x07")])

    # A legacy file as torch before 0.4 writes it from Python 2: str
    # (SHORT_BINSTRING), OrderedDict([[key, value], ...]), _rebuild_tensor;
    # two views of one storage.
    legacy("legacy_py2.pt",
           b"\x80\x02ccollections\nOrderedDict\n](](" + U("w")
           + rebuild("FloatStorage", "7", 4, 1, [3], [1], view=b"N", v1=True, S=U)
           + b"e](" + U("m")
           + rebuild("FloatStorage", "7", 4, 0, [2, 2], [1, 2], view=b"N", v1=True, S=U)
           + b"ee\x85R.",
           ["7"], [(4, floats(1, 2, 3, 4))],
           sys_info=(b"\x80\x02}(" + U("protocol_version") + b"M\xe9\x03" + U("little_endian")
                     + b"\x88" + U("type_sizes") + b"}(" + U("short") + b"K\x02" + U("int")
                     + b"K\x04" + U("long") + b"K\x08uu."))
    py2 = torch.load(path("legacy_py2.pt"))
    assert list(py2) == ["w", "m"]
    assert py2["w"].tolist() == [2.0, 3.0, 4.0] and py2["m"].tolist() == [[1.0, 3.0], [2.0, 4.0]]
    legacy_one("legacy_handmade.pt")
    assert torch.load(path("legacy_handmade.pt"))["w"].tolist() == [2.0, 3.0, 4.0]

    # --- legacy files that must be rejected, each breaking one rule ---
    small_legacy = open(path("small_legacy.pt"), "rb").read()
    write("legacy_truncated.pt", small_legacy[:-3])
    write("legacy_bad_magic.pt", small_legacy[:5] + bytes([small_legacy[5] ^ 1]) + small_legacy[6:])
    legacy_one("legacy_bad_version.pt", version=1002)
    legacy_one("legacy_view.pt", view=b"(" + X("1") + J(0) + J(4) + b"t")
    legacy_one("legacy_unlisted.pt", keys=(), storages=())
    legacy_one("legacy_unreferenced.pt", keys=("0", "9"),
               storages=((4, floats(1, 2, 3, 4)), (1, floats(5))))
    legacy_one("legacy_listed_twice.pt", keys=("0", "0"),
               storages=((4, floats(1, 2, 3, 4)), (4, floats(1, 2, 3, 4))))
    legacy_one("legacy_wrong_count.pt", storages=((5, floats(1, 2, 3, 4, 5)),))
    legacy_one("legacy_huge_numel.pt", numel=2 ** 31 - 1,
               storages=((2 ** 31 - 1, floats(1, 2, 3, 4)),))
    legacy_one("legacy_short_storage.pt", storages=((4, floats(1, 2, 3)),))
    legacy_one("legacy_trailing.pt", tail=b"\x00")

    # --- safetensors that must be rejected ---
    good = safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, floats(1, 2, 3))
    write("st_small.safetensors", good)
    write("st_truncated.safetensors", good[:-2])
    write("st_huge_header.safetensors", struct.pack("<Q", 1 << 40) + b"{}")
    write("st_overlap.safetensors", safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, floats(1, 2)))
    write("st_gap.safetensors", safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, floats(1, 2)))
    write("st_shape_mismatch.safetensors", safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, floats(1, 2)))
    write("st_bad_dtype.safetensors", safetensors_bytes(
        {"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\x00"))
    dup = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},' \
          b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    write("st_dup_key.safetensors", struct.pack("<Q", len(dup)) + dup + b"\x00")
    bad_json = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
    write("st_bad_json.safetensors", struct.pack("<Q", len(bad_json)) + bad_json + b"\x00")
    deep = b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"
    write("st_deep.safetensors", struct.pack("<Q", len(deep)) + deep)


if __name__ == "__main__":
    main()
