#include "worker/weights/torch_checkpoint.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/util/files.h"
#include "common/util/status.h"
#include "worker/weights/tensor_bytes.h"
#include "worker/weights/zip_archive.h"

namespace ft::worker {
namespace {

using weights_internal::CheckedBytes;
using weights_internal::CheckedNumel;
using weights_internal::InRange;
using weights_internal::kMaxDims;
using weights_internal::Quote;
using weights_internal::TensorFromBytes;
using weights_internal::ZipArchive;
using weights_internal::ZipEntry;

// Bounds on what a checkpoint may hold. Real state_dicts are far below them.
constexpr uint64_t kMaxFileBytes = uint64_t{1} << 36;  // 64 GiB
constexpr uint64_t kMaxPickleBytes = uint64_t{64} << 20;
constexpr size_t kMaxStack = size_t{1} << 20;    // values on the pickle stack
constexpr size_t kMaxMarks = 4096;               // open MARKs (nesting depth)
constexpr size_t kMaxMemo = size_t{1} << 20;     // memo entries
constexpr uint64_t kMaxStringBytes = 1 << 20;    // one pickled string
constexpr size_t kMaxItems = size_t{1} << 23;    // values inside containers, all together
constexpr size_t kMaxObjects = size_t{1} << 22;  // strings, tuples, lists, dicts, ...
constexpr size_t kMaxDicts = size_t{1} << 20;    // dicts cost the most memory each
constexpr size_t kMaxTensors = 100000;
constexpr size_t kMaxGlobalLine = 256;
// Tensors may share storage (tied weights), so the tensors read may exceed
// the file; a bounded multiple stops a small file from asking for terabytes.
constexpr uint64_t kMaxOutputFactor = 4;
constexpr uint64_t kOutputSlackBytes = uint64_t{1} << 20;

// The legacy format (torch.save(..., _use_new_zipfile_serialization=False),
// and every torch.save before 1.6) is five pickles in a row, then the
// storages' bytes. The first pickle is this 80-bit int (LONG1, 10 bytes);
// the second is the format's protocol version.
constexpr char kLegacyMagic[] = "\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
constexpr int64_t kLegacyProtocolVersion = 1001;

bool ValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    uint32_t min;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (len > s.size() - i) return false;
    for (size_t k = 1; k < len; ++k) {
      const uint8_t cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Pickle: a small VM for the opcodes torch.save emits (protocol 2; the
// protocol 4 framing and memo opcodes too). Containers live in arenas and
// values refer to them by index, so self-referencing or deeply nested input
// costs no recursion and no reference cycles.

enum class Kind : uint8_t {
  kNone, kBool, kInt, kFloat, kStr, kTuple, kList, kDict, kGlobal, kStorage, kTensor,
};

const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kStr: return "str";
    case Kind::kTuple: return "tuple";
    case Kind::kList: return "list";
    case Kind::kDict: return "dict";
    case Kind::kGlobal: return "global";
    case Kind::kStorage: return "storage";
    case Kind::kTensor: return "tensor";
  }
  return "?";
}

// kBool, kInt: `i` is the value; kFloat: `f`; any other kind: `i` indexes
// the arena of that kind.
struct Value {
  Kind kind = Kind::kNone;
  int64_t i = 0;
  double f = 0;
};

enum class GlobalKind {
  kOrderedDict, kRebuildTensor, kRebuildTensorV2, kRebuildParameter, kStorageType,
};

struct Global {
  GlobalKind kind;
  at::ScalarType dtype;  // for kStorageType
};

struct Dict {
  std::vector<std::pair<Value, Value>> items;
  std::unordered_map<std::string, size_t> index;  // key -> position in items
};

struct Storage {
  at::ScalarType dtype;
  int64_t numel;
  // Its bytes: a zip record (which may be longer than numel elements), or
  // in a legacy file exactly numel elements, known once the data section
  // after the pickles is read (`resolved`).
  absl::string_view bytes;
  bool resolved = false;
};

struct TensorSpec {
  size_t storage;
  int64_t offset;
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
};

bool StorageDtype(absl::string_view name, at::ScalarType* dtype) {
  static const std::pair<const char*, at::ScalarType> kTypes[] = {
      {"DoubleStorage", at::kDouble},   {"FloatStorage", at::kFloat},
      {"HalfStorage", at::kHalf},       {"BFloat16Storage", at::kBFloat16},
      {"LongStorage", at::kLong},       {"IntStorage", at::kInt},
      {"ShortStorage", at::kShort},     {"CharStorage", at::kChar},
      {"ByteStorage", at::kByte},       {"BoolStorage", at::kBool},
      {"ComplexFloatStorage", at::kComplexFloat},
      {"ComplexDoubleStorage", at::kComplexDouble},
  };
  for (const auto& [type_name, type] : kTypes) {
    if (name == type_name) {
      *dtype = type;
      return true;
    }
  }
  return false;
}

namespace op {
constexpr uint8_t kProto = 0x80, kFrame = 0x95, kStop = '.', kGlobal = 'c', kStackGlobal = 0x93;
constexpr uint8_t kBinPut = 'q', kLongBinPut = 'r', kMemoize = 0x94, kBinGet = 'h',
                  kLongBinGet = 'j';
constexpr uint8_t kMark = '(', kPop = '0', kPopMark = '1', kDup = '2';
constexpr uint8_t kEmptyDict = '}', kEmptyList = ']', kEmptyTuple = ')', kTuple = 't',
                  kTuple1 = 0x85, kTuple2 = 0x86, kTuple3 = 0x87;
constexpr uint8_t kAppend = 'a', kAppends = 'e', kSetItem = 's', kSetItems = 'u';
constexpr uint8_t kBinUnicode = 'X', kShortBinUnicode = 0x8c, kBinUnicode8 = 0x8d;
constexpr uint8_t kBinString = 'T', kShortBinString = 'U';  // Python 2 str
constexpr uint8_t kBinInt = 'J', kBinInt1 = 'K', kBinInt2 = 'M', kLong1 = 0x8a,
                  kBinFloat = 'G';
constexpr uint8_t kNewTrue = 0x88, kNewFalse = 0x89, kNone = 'N';
constexpr uint8_t kReduce = 'R', kBuild = 'b', kBinPersId = 'Q';
}  // namespace op

// One Unpickler reads every pickle of one checkpoint: the arenas, the
// storages and the caps are shared, and each pickle gets a fresh memo and
// stack, as each pickle.load() does in Python.
class Unpickler {
 public:
  // `zip` (borrowed) holds the storage records, under `prefix`data/; nullptr
  // for a legacy file, whose storages come from ReadLegacyStorages.
  // `file_size` bounds what the tensors may add up to.
  Unpickler(ZipArchive* zip, std::string prefix, uint64_t file_size, const std::string& what)
      : zip_(zip), prefix_(std::move(prefix)), file_size_(file_size), what_(what) {}

  // Runs the pickle at the start of `in` up to its STOP and returns what it
  // built; *end is the offset after the STOP. `name` names the pickle in
  // errors. Reads at most kMaxPickleBytes of `in`.
  absl::StatusOr<Value> Load(absl::string_view in, std::string name, uint64_t* end);

  // A legacy file's data section, `data` (after the last pickle): for each
  // of `keys` (a loaded list of storage keys) in order, an int64 element
  // count and that many elements. Every key must be one a tensor used, and
  // every storage a tensor used must be there.
  absl::Status ReadLegacyStorages(const Value& keys, absl::string_view data, uint64_t data_offset);

  // `root`, a loaded dict of tensors, as NamedTensors in the dict's order.
  absl::StatusOr<std::vector<NamedTensor>> StateDict(const Value& root);

 private:
  absl::Status Corrupt(absl::string_view detail) const {
    return absl::DataLossError(absl::StrCat(what_, ": corrupt ", name_, ": ", detail,
                                            " (opcode at offset ", op_pos_, ")"));
  }
  absl::Status Unsupported(absl::string_view detail) const {
    return absl::InvalidArgumentError(absl::StrCat(what_, ": ", detail, " (", name_, " offset ",
                                                   op_pos_, ")"));
  }
  // Running off the end of the input: a truncated pickle, or one longer
  // than Load reads.
  absl::Status PastEnd(absl::string_view detail) const {
    if (clipped_) {
      return absl::InvalidArgumentError(absl::StrCat(
          what_, ": ", name_, " is larger than the limit of ", kMaxPickleBytes, " bytes"));
    }
    return absl::DataLossError(absl::StrCat(what_, ": truncated ", name_, ": ", detail));
  }

  absl::Status Step(uint8_t code);
  absl::Status Take(uint64_t n, absl::string_view* out);
  absl::Status TakeLine(absl::string_view* out);
  absl::Status TakeLe(size_t width, uint64_t* out);

  size_t Floor() const { return marks_.empty() ? 0 : marks_.back(); }
  absl::Status Push(Value v);
  absl::Status Pop(Value* v);
  absl::Status Top(Value** v);
  absl::Status PopMark(std::vector<Value>* items);
  absl::Status CountItems(size_t n);

  absl::Status CountObject();
  absl::Status PushSeq(Kind kind, std::vector<Value> items);
  absl::Status NewDict(Value* result);
  absl::Status PushString(absl::string_view s);
  absl::Status PushGlobal(absl::string_view module, absl::string_view name);
  absl::Status SetItem(Dict& dict, const Value& key, const Value& value);
  absl::Status Memoize(uint64_t index);
  absl::Status Reduce(const Value& callable, const Value& args, Value* result);
  absl::Status OrderedDict(const std::vector<Value>& args, Value* result);
  absl::Status PersistentLoad(const Value& pid, Value* result);
  absl::Status ZipStorage(const std::string& key, at::ScalarType dtype, int64_t numel,
                          Value* result);
  absl::Status LegacyStorage(const std::string& key, at::ScalarType dtype, int64_t numel,
                             Value* result);
  absl::Status RebuildTensor(const std::vector<Value>& args, bool v2, Value* result);
  absl::Status IntTuple(const Value& v, absl::string_view what, std::vector<int64_t>* out);
  absl::StatusOr<at::Tensor> Materialize(const TensorSpec& spec, const std::string& name);

  ZipArchive* zip_;
  std::string prefix_;
  uint64_t file_size_;
  const std::string& what_;

  // The pickle Load is running.
  absl::string_view in_;
  std::string name_;
  bool clipped_ = false;
  uint64_t pos_ = 0;
  uint64_t op_pos_ = 0;

  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  size_t items_ = 0;
  size_t objects_ = 0;

  std::vector<std::string> strings_;
  std::vector<std::vector<Value>> seqs_;  // tuples and lists
  std::vector<Dict> dicts_;
  std::vector<Global> globals_;
  std::vector<Storage> storages_;
  std::unordered_map<std::string, size_t> legacy_storages_;  // key -> storages_ index
  std::vector<TensorSpec> tensors_;
  uint64_t output_bytes_ = 0;
};

absl::Status Unpickler::Take(uint64_t n, absl::string_view* out) {
  if (n > in_.size() - pos_) {
    return PastEnd(absl::StrCat("opcode at offset ", op_pos_, " needs ", n, " bytes at offset ",
                                pos_, ", the input has ", in_.size()));
  }
  *out = in_.substr(pos_, n);
  pos_ += n;
  return absl::OkStatus();
}

absl::Status Unpickler::TakeLe(size_t width, uint64_t* out) {
  absl::string_view b;
  FT_RETURN_IF_ERROR(Take(width, &b));
  uint64_t v = 0;
  for (size_t k = width; k-- > 0;) v = (v << 8) | static_cast<uint8_t>(b[k]);
  *out = v;
  return absl::OkStatus();
}

absl::Status Unpickler::TakeLine(absl::string_view* out) {
  const absl::string_view rest = in_.substr(pos_, kMaxGlobalLine + 1);
  const size_t nl = rest.find('\n');
  if (nl == rest.npos) {
    if (rest.size() <= kMaxGlobalLine) {
      return PastEnd("unterminated GLOBAL");
    }
    return Corrupt("GLOBAL name too long");
  }
  *out = rest.substr(0, nl);
  pos_ += nl + 1;
  return absl::OkStatus();
}

absl::Status Unpickler::Push(Value v) {
  if (stack_.size() >= kMaxStack) return Unsupported("pickle stack too deep");
  stack_.push_back(v);
  return absl::OkStatus();
}

absl::Status Unpickler::Pop(Value* v) {
  if (stack_.size() <= Floor()) return Corrupt("stack underflow");
  *v = stack_.back();
  stack_.pop_back();
  return absl::OkStatus();
}

absl::Status Unpickler::Top(Value** v) {
  if (stack_.size() <= Floor()) return Corrupt("stack underflow");
  *v = &stack_.back();
  return absl::OkStatus();
}

absl::Status Unpickler::PopMark(std::vector<Value>* items) {
  if (marks_.empty()) return Corrupt("no MARK to pop to");
  const size_t mark = marks_.back();
  marks_.pop_back();
  items->assign(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
  stack_.resize(mark);
  return absl::OkStatus();
}

absl::Status Unpickler::CountItems(size_t n) {
  if (n > kMaxItems - items_) return Unsupported("pickle holds too many values");
  items_ += n;
  return absl::OkStatus();
}

// Every object the pickle creates counts, so that a pickle of a few bytes
// per object cannot make the arenas outgrow it by much.
absl::Status Unpickler::CountObject() {
  if (objects_ >= kMaxObjects) return Unsupported("pickle creates too many objects");
  ++objects_;
  return absl::OkStatus();
}

absl::Status Unpickler::PushSeq(Kind kind, std::vector<Value> items) {
  FT_RETURN_IF_ERROR(CountObject());
  FT_RETURN_IF_ERROR(CountItems(items.size()));
  seqs_.push_back(std::move(items));
  return Push(Value{kind, static_cast<int64_t>(seqs_.size() - 1), 0});
}

absl::Status Unpickler::NewDict(Value* result) {
  FT_RETURN_IF_ERROR(CountObject());
  if (dicts_.size() >= kMaxDicts) return Unsupported("pickle creates too many dicts");
  dicts_.emplace_back();
  *result = Value{Kind::kDict, static_cast<int64_t>(dicts_.size() - 1), 0};
  return absl::OkStatus();
}

absl::Status Unpickler::PushString(absl::string_view s) {
  if (s.size() > kMaxStringBytes) {
    return Unsupported(absl::StrCat("pickled string of ", s.size(), " bytes is too long"));
  }
  if (!ValidUtf8(s)) return Corrupt("string is not valid UTF-8");
  FT_RETURN_IF_ERROR(CountObject());
  strings_.emplace_back(s);
  return Push(Value{Kind::kStr, static_cast<int64_t>(strings_.size() - 1), 0});
}

absl::Status Unpickler::PushGlobal(absl::string_view module, absl::string_view name) {
  Global g{GlobalKind::kOrderedDict, at::kFloat};
  if (module == "collections" && name == "OrderedDict") {
    g.kind = GlobalKind::kOrderedDict;
  } else if (module == "torch._utils" && name == "_rebuild_tensor") {
    g.kind = GlobalKind::kRebuildTensor;  // torch before 0.4, in legacy files
  } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
    g.kind = GlobalKind::kRebuildTensorV2;
  } else if (module == "torch._utils" && name == "_rebuild_parameter") {
    g.kind = GlobalKind::kRebuildParameter;
  } else if (module == "torch" && StorageDtype(name, &g.dtype)) {
    g.kind = GlobalKind::kStorageType;
  } else {
    return Unsupported(absl::StrCat(
        "forbidden pickle global ", Quote(absl::StrCat(module, ".", name)),
        "; a state_dict checkpoint may only use collections.OrderedDict, "
        "torch._utils._rebuild_tensor(_v2)/_rebuild_parameter and torch storage types"));
  }
  FT_RETURN_IF_ERROR(CountObject());
  globals_.push_back(g);
  return Push(Value{Kind::kGlobal, static_cast<int64_t>(globals_.size() - 1), 0});
}

absl::Status Unpickler::SetItem(Dict& dict, const Value& key, const Value& value) {
  std::string k;
  if (key.kind == Kind::kStr) {
    k = absl::StrCat("s", strings_[static_cast<size_t>(key.i)]);
  } else if (key.kind == Kind::kInt) {
    k = absl::StrCat("i", key.i);
  } else {
    return Unsupported(absl::StrCat("dict key of type ", KindName(key.kind)));
  }
  auto [it, inserted] = dict.index.emplace(std::move(k), dict.items.size());
  if (inserted) {
    FT_RETURN_IF_ERROR(CountItems(2));
    dict.items.emplace_back(key, value);
  } else {
    dict.items[it->second].second = value;  // Python keeps the first position
  }
  return absl::OkStatus();
}

absl::Status Unpickler::Memoize(uint64_t index) {
  Value* top = nullptr;
  FT_RETURN_IF_ERROR(Top(&top));
  auto it = memo_.find(index);
  if (it != memo_.end()) {
    it->second = *top;
    return absl::OkStatus();
  }
  if (memo_.size() >= kMaxMemo) return Unsupported("pickle memo too large");
  memo_.emplace(index, *top);
  return absl::OkStatus();
}

absl::Status Unpickler::IntTuple(const Value& v, absl::string_view what,
                                 std::vector<int64_t>* out) {
  if (v.kind != Kind::kTuple) {
    return Corrupt(absl::StrCat("tensor ", what, " is a ", KindName(v.kind), ", not a tuple"));
  }
  const std::vector<Value>& items = seqs_[static_cast<size_t>(v.i)];
  if (items.size() > kMaxDims) {
    return Unsupported(absl::StrCat("tensor with ", items.size(), " dimensions"));
  }
  out->clear();
  for (const Value& item : items) {
    if (item.kind != Kind::kInt || item.i < 0) {
      return Corrupt(absl::StrCat("tensor ", what, " holds a negative or non-integer value"));
    }
    out->push_back(item.i);
  }
  return absl::OkStatus();
}

// A storage's persistent id: ('storage', type, key, location, numel) in a
// zip, with a sixth item, view_metadata, in a legacy file.
absl::Status Unpickler::PersistentLoad(const Value& pid, Value* result) {
  const size_t want = zip_ != nullptr ? 5 : 6;
  if (pid.kind != Kind::kTuple || seqs_[static_cast<size_t>(pid.i)].size() != want) {
    return Corrupt(zip_ != nullptr
                       ? "persistent id is not a 5-tuple ('storage', type, key, location, numel)"
                       : "persistent id is not a 6-tuple "
                         "('storage', type, key, location, numel, view_metadata)");
  }
  const std::vector<Value>& t = seqs_[static_cast<size_t>(pid.i)];
  if (t[0].kind != Kind::kStr || strings_[static_cast<size_t>(t[0].i)] != "storage") {
    return Unsupported("persistent id that is not a storage");
  }
  if (t[1].kind != Kind::kGlobal ||
      globals_[static_cast<size_t>(t[1].i)].kind != GlobalKind::kStorageType) {
    return Corrupt("persistent id does not name a storage type");
  }
  if (t[2].kind != Kind::kStr || t[3].kind != Kind::kStr || t[4].kind != Kind::kInt ||
      t[4].i < 0) {
    return Corrupt("persistent id has a bad key, location or size");
  }
  const at::ScalarType dtype = globals_[static_cast<size_t>(t[1].i)].dtype;
  const std::string& key = strings_[static_cast<size_t>(t[2].i)];
  if (zip_ != nullptr) return ZipStorage(key, dtype, t[4].i, result);
  if (t[5].kind != Kind::kNone) {
    // torch.save writes view_metadata only for a storage saved as a slice
    // of another, which a state_dict of tensors never holds.
    return Unsupported(absl::StrCat("storage ", Quote(key),
                                    " is a view of another storage (view_metadata is not None); "
                                    "not supported"));
  }
  return LegacyStorage(key, dtype, t[4].i, result);
}

absl::Status Unpickler::ZipStorage(const std::string& key, at::ScalarType dtype, int64_t numel,
                                   Value* result) {
  ZipEntry* entry = zip_->Find(absl::StrCat(prefix_, "data/", key));
  if (entry == nullptr) {
    return absl::DataLossError(
        absl::StrCat(what_, ": storage ", Quote(key), " has no record ",
                     Quote(absl::StrCat(prefix_, "data/", key)), " in the zip"));
  }
  uint64_t nbytes = 0;
  if (!CheckedBytes(numel, c10::elementSize(dtype), &nbytes) || nbytes > entry->size) {
    return absl::DataLossError(absl::StrCat(what_, ": storage ", Quote(key), " of ", numel, " ",
                                            c10::toString(dtype), " elements needs more than the ",
                                            entry->size, " bytes of its record"));
  }
  // CRC check, once per record.
  FT_ASSIGN_OR_RETURN(absl::string_view record, zip_->Contents(*entry));
  FT_RETURN_IF_ERROR(CountObject());
  storages_.push_back(Storage{dtype, numel, record, /*resolved=*/true});
  *result = Value{Kind::kStorage, static_cast<int64_t>(storages_.size() - 1), 0};
  return absl::OkStatus();
}

// A legacy file's storage bytes follow the pickles, so here a storage is
// only named; every tensor on it gets the same Storage.
absl::Status Unpickler::LegacyStorage(const std::string& key, at::ScalarType dtype, int64_t numel,
                                      Value* result) {
  auto it = legacy_storages_.find(key);
  if (it != legacy_storages_.end()) {
    const Storage& known = storages_[it->second];
    if (known.dtype != dtype || known.numel != numel) {
      return Corrupt(absl::StrCat("storage ", Quote(key), " is named with two types or sizes"));
    }
    *result = Value{Kind::kStorage, static_cast<int64_t>(it->second), 0};
    return absl::OkStatus();
  }
  uint64_t nbytes = 0;
  if (!CheckedBytes(numel, c10::elementSize(dtype), &nbytes) || nbytes > file_size_) {
    return absl::DataLossError(absl::StrCat(what_, ": storage ", Quote(key), " of ", numel, " ",
                                            c10::toString(dtype), " elements needs more than the ",
                                            file_size_, " bytes of the file"));
  }
  FT_RETURN_IF_ERROR(CountObject());
  storages_.push_back(Storage{dtype, numel, absl::string_view(), /*resolved=*/false});
  legacy_storages_.emplace(key, storages_.size() - 1);
  *result = Value{Kind::kStorage, static_cast<int64_t>(storages_.size() - 1), 0};
  return absl::OkStatus();
}

// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
//                    backward_hooks[, metadata]), or with `v2` false
// _rebuild_tensor(storage, storage_offset, size, stride).
absl::Status Unpickler::RebuildTensor(const std::vector<Value>& args, bool v2, Value* result) {
  const char* fn = v2 ? "_rebuild_tensor_v2" : "_rebuild_tensor";
  if (v2 ? args.size() != 6 && args.size() != 7 : args.size() != 4) {
    return Corrupt(absl::StrCat(fn, " called with ", args.size(), " arguments"));
  }
  if (args[0].kind != Kind::kStorage) return Corrupt(absl::StrCat(fn, " without a storage"));
  if (args[1].kind != Kind::kInt || args[1].i < 0) {
    return Corrupt("tensor storage offset is not a non-negative integer");
  }
  if (v2 && args[4].kind != Kind::kBool) return Corrupt("tensor requires_grad is not a bool");
  if (v2 && args[5].kind != Kind::kDict) return Corrupt("tensor backward_hooks is not a dict");
  if (args.size() == 7 && args[6].kind != Kind::kDict && args[6].kind != Kind::kNone) {
    return Corrupt("tensor metadata is not a dict");
  }
  if (tensors_.size() >= kMaxTensors) {
    return Unsupported(absl::StrCat("more than ", kMaxTensors, " tensors"));
  }
  TensorSpec spec;
  spec.storage = static_cast<size_t>(args[0].i);
  spec.offset = args[1].i;
  FT_RETURN_IF_ERROR(IntTuple(args[2], "size", &spec.sizes));
  FT_RETURN_IF_ERROR(IntTuple(args[3], "stride", &spec.strides));
  if (spec.sizes.size() != spec.strides.size()) {
    return Corrupt("tensor size and stride differ in length");
  }
  const Storage& storage = storages_[spec.storage];
  int64_t numel = 0;
  if (!CheckedNumel(spec.sizes, &numel)) return Corrupt("tensor size overflows");
  // The view must stay inside its storage: the highest element it reaches is
  // offset + sum((size - 1) * stride).
  if (numel == 0) {
    if (spec.offset > storage.numel) return Corrupt("empty tensor's offset is past its storage");
  } else {
    int64_t last = spec.offset;
    for (size_t d = 0; d < spec.sizes.size(); ++d) {
      int64_t step = 0;
      if (__builtin_mul_overflow(spec.sizes[d] - 1, spec.strides[d], &step) ||
          __builtin_add_overflow(last, step, &last)) {
        return Corrupt("tensor extent overflows");
      }
    }
    if (last >= storage.numel) {
      return absl::DataLossError(absl::StrCat(
          what_, ": tensor view (offset ", spec.offset, ", last element ", last,
          ") lies outside its storage of ", storage.numel, " elements"));
    }
  }
  tensors_.push_back(std::move(spec));
  *result = Value{Kind::kTensor, static_cast<int64_t>(tensors_.size() - 1), 0};
  return absl::OkStatus();
}

// OrderedDict() as Python 3 pickles it (the items follow as SETITEMS), or
// OrderedDict([[key, value], ...]) as Python 2 does.
absl::Status Unpickler::OrderedDict(const std::vector<Value>& args, Value* result) {
  FT_RETURN_IF_ERROR(NewDict(result));
  if (args.empty()) return absl::OkStatus();
  if (args.size() != 1 || (args[0].kind != Kind::kList && args[0].kind != Kind::kTuple)) {
    return Unsupported("OrderedDict built from arguments other than a list of pairs");
  }
  for (const Value& pair : seqs_[static_cast<size_t>(args[0].i)]) {
    if ((pair.kind != Kind::kList && pair.kind != Kind::kTuple) ||
        seqs_[static_cast<size_t>(pair.i)].size() != 2) {
      return Corrupt("OrderedDict item is not a (key, value) pair");
    }
    const std::vector<Value>& kv = seqs_[static_cast<size_t>(pair.i)];
    FT_RETURN_IF_ERROR(SetItem(dicts_[static_cast<size_t>(result->i)], kv[0], kv[1]));
  }
  return absl::OkStatus();
}

absl::Status Unpickler::Reduce(const Value& callable, const Value& args, Value* result) {
  if (callable.kind != Kind::kGlobal) {
    return Corrupt(absl::StrCat("REDUCE on a ", KindName(callable.kind)));
  }
  if (args.kind != Kind::kTuple) return Corrupt("REDUCE arguments are not a tuple");
  const std::vector<Value>& a = seqs_[static_cast<size_t>(args.i)];
  switch (globals_[static_cast<size_t>(callable.i)].kind) {
    case GlobalKind::kOrderedDict:
      return OrderedDict(a, result);
    case GlobalKind::kRebuildTensor:
    case GlobalKind::kRebuildTensorV2:
      return RebuildTensor(a, globals_[static_cast<size_t>(callable.i)].kind ==
                                  GlobalKind::kRebuildTensorV2, result);
    case GlobalKind::kRebuildParameter:
      // _rebuild_parameter(data, requires_grad, backward_hooks): the data is all we keep.
      if (a.size() != 3 || a[0].kind != Kind::kTensor) {
        return Corrupt("_rebuild_parameter without a tensor");
      }
      *result = a[0];
      return absl::OkStatus();
    case GlobalKind::kStorageType:
      return Unsupported("a storage type called as a function");
  }
  return Corrupt("unknown global");
}

absl::Status Unpickler::Step(uint8_t code) {
  Value a, b;
  Value* top = nullptr;
  std::vector<Value> items;
  absl::string_view s;
  uint64_t n = 0;
  switch (code) {
    case op::kProto:
      FT_RETURN_IF_ERROR(TakeLe(1, &n));
      if (n < 2 || n > 5) return Unsupported(absl::StrCat("pickle protocol ", n));
      return absl::OkStatus();
    case op::kFrame:  // framing is only a read-ahead hint
      FT_RETURN_IF_ERROR(TakeLe(8, &n));
      if (n > in_.size() - pos_) return Corrupt("FRAME runs past the pickle");
      return absl::OkStatus();
    case op::kGlobal: {
      absl::string_view module, name;
      FT_RETURN_IF_ERROR(TakeLine(&module));
      FT_RETURN_IF_ERROR(TakeLine(&name));
      return PushGlobal(module, name);
    }
    case op::kStackGlobal:
      FT_RETURN_IF_ERROR(Pop(&b));
      FT_RETURN_IF_ERROR(Pop(&a));
      if (a.kind != Kind::kStr || b.kind != Kind::kStr) {
        return Corrupt("STACK_GLOBAL operands are not strings");
      }
      return PushGlobal(strings_[static_cast<size_t>(a.i)], strings_[static_cast<size_t>(b.i)]);
    case op::kBinPut:
      FT_RETURN_IF_ERROR(TakeLe(1, &n));
      return Memoize(n);
    case op::kLongBinPut:
      FT_RETURN_IF_ERROR(TakeLe(4, &n));
      return Memoize(n);
    case op::kMemoize:
      return Memoize(memo_.size());
    case op::kBinGet:
    case op::kLongBinGet: {
      FT_RETURN_IF_ERROR(TakeLe(code == op::kBinGet ? 1 : 4, &n));
      auto it = memo_.find(n);
      if (it == memo_.end()) return Corrupt(absl::StrCat("memo key ", n, " is not set"));
      return Push(it->second);
    }
    case op::kMark:
      if (marks_.size() >= kMaxMarks) return Unsupported("pickle MARKs nested too deeply");
      marks_.push_back(stack_.size());
      return absl::OkStatus();
    case op::kPop:
      if (stack_.size() > Floor()) {
        stack_.pop_back();
        return absl::OkStatus();
      }
      return PopMark(&items);
    case op::kPopMark:
      return PopMark(&items);
    case op::kDup:
      FT_RETURN_IF_ERROR(Top(&top));
      return Push(*top);
    case op::kEmptyDict:
      FT_RETURN_IF_ERROR(NewDict(&a));
      return Push(a);
    case op::kEmptyList:
      return PushSeq(Kind::kList, {});
    case op::kEmptyTuple:
      return PushSeq(Kind::kTuple, {});
    case op::kTuple:
      FT_RETURN_IF_ERROR(PopMark(&items));
      return PushSeq(Kind::kTuple, std::move(items));
    case op::kTuple1:
    case op::kTuple2:
    case op::kTuple3: {
      const size_t count = static_cast<size_t>(code - op::kTuple1 + 1);
      if (stack_.size() - Floor() < count) return Corrupt("stack underflow");
      items.assign(stack_.end() - static_cast<std::ptrdiff_t>(count), stack_.end());
      stack_.resize(stack_.size() - count);
      return PushSeq(Kind::kTuple, std::move(items));
    }
    case op::kAppend:
    case op::kAppends: {
      if (code == op::kAppend) {
        FT_RETURN_IF_ERROR(Pop(&a));
        items.push_back(a);
      } else {
        FT_RETURN_IF_ERROR(PopMark(&items));
      }
      FT_RETURN_IF_ERROR(Top(&top));
      if (top->kind != Kind::kList) return Corrupt(absl::StrCat("APPEND to a ", KindName(top->kind)));
      FT_RETURN_IF_ERROR(CountItems(items.size()));
      std::vector<Value>& list = seqs_[static_cast<size_t>(top->i)];
      list.insert(list.end(), items.begin(), items.end());
      return absl::OkStatus();
    }
    case op::kSetItem:
    case op::kSetItems: {
      if (code == op::kSetItem) {
        FT_RETURN_IF_ERROR(Pop(&b));
        FT_RETURN_IF_ERROR(Pop(&a));
        items = {a, b};
      } else {
        FT_RETURN_IF_ERROR(PopMark(&items));
        if (items.size() % 2 != 0) return Corrupt("SETITEMS with an odd number of values");
      }
      FT_RETURN_IF_ERROR(Top(&top));
      if (top->kind != Kind::kDict) {
        return Corrupt(absl::StrCat("SETITEM on a ", KindName(top->kind)));
      }
      Dict& dict = dicts_[static_cast<size_t>(top->i)];
      for (size_t k = 0; k < items.size(); k += 2) {
        FT_RETURN_IF_ERROR(SetItem(dict, items[k], items[k + 1]));
      }
      return absl::OkStatus();
    }
    case op::kBinUnicode:
    case op::kShortBinUnicode:
    case op::kBinUnicode8:
      FT_RETURN_IF_ERROR(
          TakeLe(code == op::kShortBinUnicode ? 1 : code == op::kBinUnicode ? 4 : 8, &n));
      FT_RETURN_IF_ERROR(Take(n, &s));
      return PushString(s);
    case op::kBinString:
    case op::kShortBinString:
      // Python 2's str; torch.load decodes it as UTF-8, as PushString checks.
      FT_RETURN_IF_ERROR(TakeLe(code == op::kShortBinString ? 1 : 4, &n));
      if (n > INT32_MAX) return Corrupt("BINSTRING with a negative length");
      FT_RETURN_IF_ERROR(Take(n, &s));
      return PushString(s);
    case op::kBinInt:
      FT_RETURN_IF_ERROR(TakeLe(4, &n));
      return Push(Value{Kind::kInt, static_cast<int32_t>(static_cast<uint32_t>(n)), 0});
    case op::kBinInt1:
    case op::kBinInt2:
      FT_RETURN_IF_ERROR(TakeLe(code == op::kBinInt1 ? 1 : 2, &n));
      return Push(Value{Kind::kInt, static_cast<int64_t>(n), 0});
    case op::kLong1: {
      uint64_t width = 0;
      FT_RETURN_IF_ERROR(TakeLe(1, &width));
      if (width > 8) return Unsupported("integer wider than 64 bits");
      if (width == 0) return Push(Value{Kind::kInt, 0, 0});
      FT_RETURN_IF_ERROR(TakeLe(static_cast<size_t>(width), &n));
      if (width < 8 && (n >> (width * 8 - 1)) != 0) n |= ~uint64_t{0} << (width * 8);  // sign
      return Push(Value{Kind::kInt, static_cast<int64_t>(n), 0});
    }
    case op::kBinFloat: {
      FT_RETURN_IF_ERROR(Take(8, &s));
      uint64_t bits = 0;
      for (char c : s) bits = (bits << 8) | static_cast<uint8_t>(c);  // big-endian
      double d;
      std::memcpy(&d, &bits, sizeof d);
      return Push(Value{Kind::kFloat, 0, d});
    }
    case op::kNewTrue:
    case op::kNewFalse:
      return Push(Value{Kind::kBool, code == op::kNewTrue ? 1 : 0, 0});
    case op::kNone:
      return Push(Value{});
    case op::kReduce: {
      FT_RETURN_IF_ERROR(Pop(&b));
      FT_RETURN_IF_ERROR(Pop(&a));
      Value result;
      FT_RETURN_IF_ERROR(Reduce(a, b, &result));
      return Push(result);
    }
    case op::kBuild:
      // torch.save sets OrderedDict._metadata this way; it is not needed.
      FT_RETURN_IF_ERROR(Pop(&a));
      FT_RETURN_IF_ERROR(Top(&top));
      if (top->kind != Kind::kDict) return Unsupported(absl::StrCat("BUILD on a ", KindName(top->kind)));
      return absl::OkStatus();
    case op::kBinPersId: {
      FT_RETURN_IF_ERROR(Pop(&a));
      Value result;
      FT_RETURN_IF_ERROR(PersistentLoad(a, &result));
      return Push(result);
    }
    default:
      return Unsupported(
          absl::StrCat("unsupported pickle opcode 0x", absl::Hex(code, absl::kZeroPad2)));
  }
}

absl::StatusOr<at::Tensor> Unpickler::Materialize(const TensorSpec& spec, const std::string& name) {
  const Storage& storage = storages_[spec.storage];
  const std::string what = absl::StrCat(what_, ": tensor ", Quote(name));
  const size_t element_size = c10::elementSize(storage.dtype);
  int64_t numel = 0;
  CheckedNumel(spec.sizes, &numel);  // checked in RebuildTensor
  if (numel == 0) return at::empty(spec.sizes, at::TensorOptions().dtype(storage.dtype));
  if (!storage.resolved) return absl::DataLossError(absl::StrCat(what, ": its storage is missing"));
  const absl::string_view record = storage.bytes;

  bool contiguous = true;
  int64_t expected = 1;
  int64_t last = spec.offset;
  for (size_t d = spec.sizes.size(); d-- > 0;) {
    if (spec.sizes[d] != 1 && spec.strides[d] != expected) contiguous = false;
    expected *= spec.sizes[d];
    last += (spec.sizes[d] - 1) * spec.strides[d];
  }
  // Elements [offset, last] of the storage back the view; RebuildTensor
  // checked that last < storage.numel, and ZipStorage or ReadLegacyStorages
  // that the storage fits its bytes. Check again before touching memory.
  const uint64_t span = contiguous ? static_cast<uint64_t>(numel)
                                   : static_cast<uint64_t>(last - spec.offset) + 1;
  const uint64_t begin = static_cast<uint64_t>(spec.offset) * element_size;
  uint64_t span_bytes = 0;
  if (__builtin_mul_overflow(span, element_size, &span_bytes) ||
      !InRange(begin, span_bytes, record.size())) {
    return absl::DataLossError(absl::StrCat(what, " lies outside its storage record"));
  }
  const uint64_t limit = kMaxOutputFactor * file_size_ + kOutputSlackBytes;
  uint64_t out_bytes = 0;
  if (!CheckedBytes(numel, element_size, &out_bytes) || out_bytes > limit - output_bytes_) {
    return absl::InvalidArgumentError(absl::StrCat(
        what_, ": tensors add up to more than ", limit, " bytes; too many share one storage"));
  }
  output_bytes_ += out_bytes;

  absl::string_view bytes = record.substr(begin, span_bytes);
  if (contiguous) return TensorFromBytes(bytes, storage.dtype, spec.sizes, what);
  FT_ASSIGN_OR_RETURN(at::Tensor flat, TensorFromBytes(bytes, storage.dtype,
                                                       {static_cast<int64_t>(span)}, what));
  return flat.as_strided(spec.sizes, spec.strides, 0).clone(at::MemoryFormat::Contiguous);
}

absl::StatusOr<Value> Unpickler::Load(absl::string_view in, std::string name, uint64_t* end) {
  in_ = in.substr(0, kMaxPickleBytes);
  clipped_ = in_.size() < in.size();
  name_ = std::move(name);
  pos_ = 0;
  op_pos_ = 0;
  stack_.clear();
  marks_.clear();
  memo_.clear();
  Value result;
  for (;;) {
    if (pos_ >= in_.size()) return PastEnd("no STOP opcode");
    op_pos_ = pos_;
    const uint8_t code = static_cast<uint8_t>(in_[pos_++]);
    if (code == op::kStop) {
      FT_RETURN_IF_ERROR(Pop(&result));
      break;
    }
    FT_RETURN_IF_ERROR(Step(code));
  }
  if (!stack_.empty() || !marks_.empty()) return Corrupt("values left on the stack at STOP");
  *end = pos_;
  return result;
}

absl::Status Unpickler::ReadLegacyStorages(const Value& keys, absl::string_view data,
                                           uint64_t data_offset) {
  if (keys.kind != Kind::kList) {
    return absl::DataLossError(absl::StrCat(what_, ": the legacy storage key pickle holds a ",
                                            KindName(keys.kind), ", not a list"));
  }
  uint64_t pos = 0;
  for (const Value& k : seqs_[static_cast<size_t>(keys.i)]) {
    if (k.kind != Kind::kStr) {
      return absl::DataLossError(absl::StrCat(what_, ": the legacy storage key list holds a ",
                                              KindName(k.kind)));
    }
    const std::string& key = strings_[static_cast<size_t>(k.i)];
    auto it = legacy_storages_.find(key);
    if (it == legacy_storages_.end()) {
      return absl::DataLossError(
          absl::StrCat(what_, ": storage ", Quote(key), " is listed but no tensor uses it"));
    }
    Storage& storage = storages_[it->second];
    if (storage.resolved) {
      return absl::DataLossError(absl::StrCat(what_, ": storage ", Quote(key), " is listed twice"));
    }
    const uint64_t at = data_offset + pos;
    if (data.size() - pos < sizeof(int64_t)) {
      return absl::DataLossError(absl::StrCat(what_, ": truncated: storage ", Quote(key),
                                              " needs an element count at offset ", at,
                                              ", the file ends at ", data_offset + data.size()));
    }
    int64_t count = 0;
    std::memcpy(&count, data.data() + pos, sizeof count);  // little-endian, as the host
    if (count != storage.numel) {
      return absl::DataLossError(absl::StrCat(what_, ": storage ", Quote(key), " at offset ", at,
                                              " holds ", count, " elements, its tensors say ",
                                              storage.numel));
    }
    pos += sizeof(int64_t);
    uint64_t nbytes = 0;
    CheckedBytes(storage.numel, c10::elementSize(storage.dtype), &nbytes);  // LegacyStorage checked
    if (nbytes > data.size() - pos) {
      return absl::DataLossError(absl::StrCat(
          what_, ": truncated: storage ", Quote(key), " needs ", nbytes, " bytes at offset ",
          data_offset + pos, ", the file ends at ", data_offset + data.size()));
    }
    storage.bytes = data.substr(pos, nbytes);
    storage.resolved = true;
    pos += nbytes;
  }
  for (const auto& [key, index] : legacy_storages_) {
    if (!storages_[index].resolved) {
      return absl::DataLossError(absl::StrCat(what_, ": storage ", Quote(key),
                                              " is used by a tensor but missing from the file"));
    }
  }
  if (pos != data.size()) {
    return absl::DataLossError(absl::StrCat(what_, ": ", data.size() - pos,
                                            " bytes after the last storage, at offset ",
                                            data_offset + pos));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<NamedTensor>> Unpickler::StateDict(const Value& root) {
  if (root.kind != Kind::kDict) {
    return absl::InvalidArgumentError(absl::StrCat(
        what_, ": the checkpoint holds a ", KindName(root.kind),
        ", not a state_dict; save model.state_dict()"));
  }
  const Dict& dict = dicts_[static_cast<size_t>(root.i)];
  std::vector<NamedTensor> out;
  out.reserve(dict.items.size());
  for (const auto& [key, value] : dict.items) {
    if (key.kind != Kind::kStr) {
      return absl::InvalidArgumentError(
          absl::StrCat(what_, ": state_dict key of type ", KindName(key.kind)));
    }
    const std::string& name = strings_[static_cast<size_t>(key.i)];
    if (value.kind != Kind::kTensor) {
      return absl::InvalidArgumentError(absl::StrCat(
          what_, ": entry ", Quote(name), " is a ", KindName(value.kind),
          ", not a tensor; expected a state_dict (save model.state_dict())"));
    }
    FT_ASSIGN_OR_RETURN(at::Tensor tensor,
                        Materialize(tensors_[static_cast<size_t>(value.i)], name));
    out.push_back(NamedTensor{name, std::move(tensor)});
  }
  return out;
}

absl::StatusOr<std::vector<NamedTensor>> ParseZipCheckpoint(absl::string_view bytes,
                                                            const std::string& what) {
  FT_ASSIGN_OR_RETURN(ZipArchive zip, ZipArchive::Open(bytes, what));
  // Like torch: every record sits in one folder named after the first record.
  if (zip.entries().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": empty zip, not a torch checkpoint"));
  }
  const std::string& first = zip.entries().front().name;
  const size_t slash = first.find('/');
  if (slash == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": zip entry ", Quote(first), " is not in an archive folder; not a torch checkpoint"));
  }
  const std::string prefix = first.substr(0, slash + 1);
  if (zip.Find(prefix + "constants.pkl") != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": a TorchScript archive (torch.jit.save), not a state_dict; "
              "save model.state_dict() with torch.save instead"));
  }
  ZipEntry* pickle = zip.Find(prefix + "data.pkl");
  if (pickle == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": no ", Quote(prefix + "data.pkl"), " record; not a torch.save checkpoint"));
  }
  if (ZipEntry* order = zip.Find(prefix + "byteorder"); order != nullptr) {
    FT_ASSIGN_OR_RETURN(absl::string_view byteorder, zip.Contents(*order));
    if (byteorder != "little") {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": byte order ", Quote(byteorder), " is not supported"));
    }
  }
  if (pickle->size > kMaxPickleBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": data.pkl of ", pickle->size,
                                                   " bytes is larger than the limit of ",
                                                   kMaxPickleBytes));
  }
  FT_ASSIGN_OR_RETURN(absl::string_view pickle_bytes, zip.Contents(*pickle));
  Unpickler unpickler(&zip, prefix, bytes.size(), what);
  uint64_t end = 0;
  FT_ASSIGN_OR_RETURN(Value root, unpickler.Load(pickle_bytes, "data.pkl", &end));
  if (end != pickle_bytes.size()) {
    return absl::DataLossError(
        absl::StrCat(what, ": corrupt data.pkl: bytes after STOP (offset ", end, ")"));
  }
  return unpickler.StateDict(root);
}

absl::Status NotACheckpoint(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(
      what, ": not a torch checkpoint: not a zip archive (torch.save since 1.6), nor a pickle "
            "that starts with the magic number of torch.save's legacy format"));
}

// The legacy format: see kLegacyMagic. The first pickle is matched byte for
// byte (its int is wider than the VM's); the next three are the protocol
// version, a sys_info dict (ignored, as torch does) and the state_dict;
// the fifth lists the storage keys in the order of the data section.
absl::StatusOr<std::vector<NamedTensor>> ParseLegacyCheckpoint(absl::string_view bytes,
                                                               const std::string& what) {
  // PROTO 2..5, then for protocol 4 and up a FRAME around the int.
  const uint8_t protocol = bytes.size() > 1 ? static_cast<uint8_t>(bytes[1]) : 0;
  uint64_t pos = 2;
  if (protocol >= 4 && bytes.size() > 2 && static_cast<uint8_t>(bytes[2]) == op::kFrame) pos += 9;
  const absl::string_view magic(kLegacyMagic, sizeof(kLegacyMagic) - 1);
  const absl::string_view got = bytes.substr(std::min<uint64_t>(pos, bytes.size()), magic.size());
  if (protocol < 2 || protocol > 5 || !absl::StartsWith(magic, got)) return NotACheckpoint(what);
  if (got.size() < magic.size()) {
    return absl::DataLossError(absl::StrCat(what, ": truncated: shorter than a torch.save header"));
  }
  pos += magic.size();

  Unpickler unpickler(/*zip=*/nullptr, "", bytes.size(), what);
  uint64_t end = 0;
  FT_ASSIGN_OR_RETURN(Value version,
                      unpickler.Load(bytes.substr(pos), "legacy protocol version pickle", &end));
  pos += end;
  if (version.kind != Kind::kInt || version.i != kLegacyProtocolVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": legacy format protocol version ",
        version.kind == Kind::kInt ? absl::StrCat(version.i) : KindName(version.kind),
        " is not the supported ", kLegacyProtocolVersion));
  }
  FT_ASSIGN_OR_RETURN(Value sys_info,
                      unpickler.Load(bytes.substr(pos), "legacy sys_info pickle", &end));
  pos += end;
  if (sys_info.kind != Kind::kDict) {
    return absl::DataLossError(absl::StrCat(what, ": the legacy sys_info pickle holds a ",
                                            KindName(sys_info.kind), ", not a dict"));
  }
  FT_ASSIGN_OR_RETURN(Value root,
                      unpickler.Load(bytes.substr(pos), "legacy state_dict pickle", &end));
  pos += end;
  FT_ASSIGN_OR_RETURN(Value keys,
                      unpickler.Load(bytes.substr(pos), "legacy storage key pickle", &end));
  pos += end;
  FT_RETURN_IF_ERROR(unpickler.ReadLegacyStorages(keys, bytes.substr(pos), pos));
  return unpickler.StateDict(root);
}

absl::StatusOr<std::vector<NamedTensor>> ParseCheckpoint(absl::string_view bytes,
                                                         const std::string& what) {
  if (absl::StartsWith(bytes, absl::string_view("PK\x03\x04", 4))) {
    return ParseZipCheckpoint(bytes, what);
  }
  if (!bytes.empty() && static_cast<uint8_t>(bytes[0]) == op::kProto) {
    return ParseLegacyCheckpoint(bytes, what);
  }
  constexpr size_t kTarMagicOffset = 257;
  if (bytes.size() > kTarMagicOffset && absl::StartsWith(bytes.substr(kTarMagicOffset), "ustar")) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": a tar-format torch checkpoint (the earliest torch releases) is not supported; "
              "load and re-save it with a current torch"));
  }
  return NotACheckpoint(what);
}

}  // namespace

absl::StatusOr<std::vector<NamedTensor>> ParseTorchCheckpoint(absl::string_view bytes,
                                                              const std::string& what_for_errors) {
  return weights_internal::GuardExceptions<c10::Error>(
      what_for_errors, [&] { return ParseCheckpoint(bytes, what_for_errors); });
}

absl::StatusOr<std::vector<NamedTensor>> ReadTorchCheckpoint(const std::string& path) {
  return weights_internal::GuardExceptions<c10::Error>(
      path, [&]() -> absl::StatusOr<std::vector<NamedTensor>> {
        FT_ASSIGN_OR_RETURN(std::string bytes, util::ReadFile(path, kMaxFileBytes));
        return ParseTorchCheckpoint(bytes, path);
      });
}

}  // namespace ft::worker
