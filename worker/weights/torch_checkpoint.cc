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
#include "proto/util/files.h"
#include "proto/util/status.h"
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

enum class GlobalKind { kOrderedDict, kRebuildTensorV2, kRebuildParameter, kStorageType };

struct Global {
  GlobalKind kind;
  at::ScalarType dtype;  // for kStorageType
};

struct Dict {
  std::vector<std::pair<Value, Value>> items;
  std::unordered_map<std::string, size_t> index;  // key -> position in items
};

struct Storage {
  ZipEntry* entry;
  at::ScalarType dtype;
  int64_t numel;
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
constexpr uint8_t kBinInt = 'J', kBinInt1 = 'K', kBinInt2 = 'M', kLong1 = 0x8a,
                  kBinFloat = 'G';
constexpr uint8_t kNewTrue = 0x88, kNewFalse = 0x89, kNone = 'N';
constexpr uint8_t kReduce = 'R', kBuild = 'b', kBinPersId = 'Q';
}  // namespace op

class Unpickler {
 public:
  Unpickler(absl::string_view pickle, ZipArchive* zip, std::string prefix, const std::string& what)
      : in_(pickle), zip_(zip), prefix_(std::move(prefix)), what_(what) {}

  absl::StatusOr<std::vector<NamedTensor>> Run();

 private:
  absl::Status Corrupt(absl::string_view detail) const {
    return absl::DataLossError(absl::StrCat(what_, ": corrupt data.pkl: ", detail,
                                            " (opcode at offset ", op_pos_, ")"));
  }
  absl::Status Unsupported(absl::string_view detail) const {
    return absl::InvalidArgumentError(absl::StrCat(what_, ": ", detail, " (data.pkl offset ",
                                                   op_pos_, ")"));
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
  absl::Status PersistentLoad(const Value& pid, Value* result);
  absl::Status RebuildTensor(const std::vector<Value>& args, Value* result);
  absl::Status IntTuple(const Value& v, absl::string_view what, std::vector<int64_t>* out);
  absl::StatusOr<at::Tensor> Materialize(const TensorSpec& spec, const std::string& name);

  absl::string_view in_;
  uint64_t pos_ = 0;
  uint64_t op_pos_ = 0;
  ZipArchive* zip_;
  std::string prefix_;
  const std::string& what_;

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
  std::vector<TensorSpec> tensors_;
  uint64_t output_bytes_ = 0;
};

absl::Status Unpickler::Take(uint64_t n, absl::string_view* out) {
  if (n > in_.size() - pos_) {
    return absl::DataLossError(absl::StrCat(what_, ": truncated data.pkl: opcode at offset ",
                                            op_pos_, " needs ", n, " bytes at offset ", pos_,
                                            ", the pickle has ", in_.size()));
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
      return absl::DataLossError(absl::StrCat(what_, ": truncated data.pkl: unterminated GLOBAL"));
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
        "torch._utils._rebuild_tensor_v2/_rebuild_parameter and torch storage types"));
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

absl::Status Unpickler::PersistentLoad(const Value& pid, Value* result) {
  if (pid.kind != Kind::kTuple || seqs_[static_cast<size_t>(pid.i)].size() != 5) {
    return Corrupt("persistent id is not a 5-tuple ('storage', type, key, location, numel)");
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
  ZipEntry* entry = zip_->Find(absl::StrCat(prefix_, "data/", key));
  if (entry == nullptr) {
    return absl::DataLossError(
        absl::StrCat(what_, ": storage ", Quote(key), " has no record ",
                     Quote(absl::StrCat(prefix_, "data/", key)), " in the zip"));
  }
  uint64_t nbytes = 0;
  if (!CheckedBytes(t[4].i, c10::elementSize(dtype), &nbytes) || nbytes > entry->size) {
    return absl::DataLossError(absl::StrCat(what_, ": storage ", Quote(key), " of ", t[4].i, " ",
                                            c10::toString(dtype), " elements needs more than the ",
                                            entry->size, " bytes of its record"));
  }
  FT_RETURN_IF_ERROR(zip_->Contents(*entry).status());  // CRC check, once per record
  FT_RETURN_IF_ERROR(CountObject());
  storages_.push_back(Storage{entry, dtype, t[4].i});
  *result = Value{Kind::kStorage, static_cast<int64_t>(storages_.size() - 1), 0};
  return absl::OkStatus();
}

// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
//                    backward_hooks[, metadata])
absl::Status Unpickler::RebuildTensor(const std::vector<Value>& args, Value* result) {
  if (args.size() != 6 && args.size() != 7) {
    return Corrupt(absl::StrCat("_rebuild_tensor_v2 called with ", args.size(), " arguments"));
  }
  if (args[0].kind != Kind::kStorage) return Corrupt("_rebuild_tensor_v2 without a storage");
  if (args[1].kind != Kind::kInt || args[1].i < 0) {
    return Corrupt("tensor storage offset is not a non-negative integer");
  }
  if (args[4].kind != Kind::kBool) return Corrupt("tensor requires_grad is not a bool");
  if (args[5].kind != Kind::kDict) return Corrupt("tensor backward_hooks is not a dict");
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

absl::Status Unpickler::Reduce(const Value& callable, const Value& args, Value* result) {
  if (callable.kind != Kind::kGlobal) {
    return Corrupt(absl::StrCat("REDUCE on a ", KindName(callable.kind)));
  }
  if (args.kind != Kind::kTuple) return Corrupt("REDUCE arguments are not a tuple");
  const std::vector<Value>& a = seqs_[static_cast<size_t>(args.i)];
  switch (globals_[static_cast<size_t>(callable.i)].kind) {
    case GlobalKind::kOrderedDict:
      if (!a.empty()) return Unsupported("OrderedDict built from arguments");
      return NewDict(result);
    case GlobalKind::kRebuildTensorV2:
      return RebuildTensor(a, result);
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
  FT_ASSIGN_OR_RETURN(absl::string_view record, zip_->Contents(*storage.entry));

  bool contiguous = true;
  int64_t expected = 1;
  int64_t last = spec.offset;
  for (size_t d = spec.sizes.size(); d-- > 0;) {
    if (spec.sizes[d] != 1 && spec.strides[d] != expected) contiguous = false;
    expected *= spec.sizes[d];
    last += (spec.sizes[d] - 1) * spec.strides[d];
  }
  // Elements [offset, last] of the storage back the view; RebuildTensor
  // checked that last < storage.numel, and PersistentLoad that the storage
  // fits its record. Check again before touching memory.
  const uint64_t span = contiguous ? static_cast<uint64_t>(numel)
                                   : static_cast<uint64_t>(last - spec.offset) + 1;
  const uint64_t begin = static_cast<uint64_t>(spec.offset) * element_size;
  uint64_t span_bytes = 0;
  if (__builtin_mul_overflow(span, element_size, &span_bytes) ||
      !InRange(begin, span_bytes, record.size())) {
    return absl::DataLossError(absl::StrCat(what, " lies outside its storage record"));
  }
  const uint64_t limit = kMaxOutputFactor * zip_->file_size() + kOutputSlackBytes;
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

absl::StatusOr<std::vector<NamedTensor>> Unpickler::Run() {
  Value result;
  for (;;) {
    if (pos_ >= in_.size()) {
      return absl::DataLossError(absl::StrCat(what_, ": truncated data.pkl: no STOP opcode"));
    }
    op_pos_ = pos_;
    const uint8_t code = static_cast<uint8_t>(in_[pos_++]);
    if (code == op::kStop) {
      FT_RETURN_IF_ERROR(Pop(&result));
      break;
    }
    FT_RETURN_IF_ERROR(Step(code));
  }
  if (pos_ != in_.size()) return Corrupt("bytes after STOP");
  if (!stack_.empty() || !marks_.empty()) return Corrupt("values left on the stack at STOP");

  if (result.kind != Kind::kDict) {
    return absl::InvalidArgumentError(absl::StrCat(
        what_, ": the checkpoint holds a ", KindName(result.kind),
        ", not a state_dict; save model.state_dict()"));
  }
  const Dict& dict = dicts_[static_cast<size_t>(result.i)];
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
  if (!absl::StartsWith(bytes, absl::string_view("PK\x03\x04", 4))) {
    return absl::InvalidArgumentError(absl::StrCat(
        what,
        ": not a zip-format torch checkpoint (saved with _use_new_zipfile_serialization=False?)"));
  }
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
  Unpickler unpickler(pickle_bytes, &zip, prefix, what);
  return unpickler.Run();
}

}  // namespace

absl::StatusOr<std::vector<NamedTensor>> ParseTorchCheckpoint(absl::string_view bytes,
                                                              const std::string& what_for_errors) {
  return weights_internal::GuardExceptions<c10::Error>(what_for_errors, [&] { return ParseZipCheckpoint(bytes, what_for_errors); });
}

absl::StatusOr<std::vector<NamedTensor>> ReadTorchCheckpoint(const std::string& path) {
  return weights_internal::GuardExceptions<c10::Error>(
      path, [&]() -> absl::StatusOr<std::vector<NamedTensor>> {
        FT_ASSIGN_OR_RETURN(std::string bytes, util::ReadFile(path, kMaxFileBytes));
        return ParseTorchCheckpoint(bytes, path);
      });
}

}  // namespace ft::worker
