// Tests of the weight-file readers against files written by torch.save and
// by hand (make_fixtures.py), plus deterministic fuzz loops: whatever bytes
// come in, the readers return a Status and never crash.
#include <gtest/gtest.h>
#include <torch/types.h>
#include <zlib.h>

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/weights/safetensors.h"
#include "worker/weights/torch_checkpoint.h"

namespace ft::worker {
namespace {

namespace fs = std::filesystem;

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const char* DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    default: return "other";
  }
}

// Mutants per fuzz loop: each parse takes microseconds, so this stays well
// under a second per loop.
constexpr int kFuzzIterations = 10000;

std::vector<int64_t> Shape(const torch::Tensor& t) { return t.sizes().vec(); }

// The same names in the same order, with equal dtypes, shapes and values.
void ExpectSameTensors(const std::vector<NamedTensor>& want, const std::vector<NamedTensor>& got) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(want[i].name);
    EXPECT_EQ(got[i].name, want[i].name);
    EXPECT_EQ(got[i].tensor.scalar_type(), want[i].tensor.scalar_type());
    EXPECT_EQ(Shape(got[i].tensor), Shape(want[i].tensor));
    EXPECT_TRUE(got[i].tensor.is_contiguous());
    EXPECT_TRUE(torch::equal(got[i].tensor, want[i].tensor));
  }
}

// A stored-only zip with correct CRCs, for re-wrapping mutated pickles.
std::string MakeZip(const std::vector<std::pair<std::string, std::string>>& entries) {
  auto le = [](std::string& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  };
  std::string out, cd;
  for (const auto& [name, data] : entries) {
    const uint32_t crc = static_cast<uint32_t>(
        crc32_z(0, reinterpret_cast<const Bytef*>(data.data()), data.size()));
    const uint64_t offset = out.size();
    le(out, 0x04034b50, 4); le(out, 20, 2); le(out, 0, 2); le(out, 0, 2); le(out, 0, 4);
    le(out, crc, 4); le(out, data.size(), 4); le(out, data.size(), 4);
    le(out, name.size(), 2); le(out, 0, 2);
    out += name;
    out += data;
    le(cd, 0x02014b50, 4); le(cd, 20, 2); le(cd, 20, 2); le(cd, 0, 2); le(cd, 0, 2);
    le(cd, 0, 4); le(cd, crc, 4); le(cd, data.size(), 4); le(cd, data.size(), 4);
    le(cd, name.size(), 2); le(cd, 0, 2); le(cd, 0, 2); le(cd, 0, 2); le(cd, 0, 2);
    le(cd, 0, 4); le(cd, offset, 4);
    cd += name;
  }
  const uint64_t cd_offset = out.size();
  out += cd;
  le(out, 0x06054b50, 4); le(out, 0, 2); le(out, 0, 2);
  le(out, entries.size(), 2); le(out, entries.size(), 2);
  le(out, cd.size(), 4); le(out, cd_offset, 4); le(out, 0, 2);
  return out;
}

// The zip for a hand-written pickle with the given storage records.
std::string PickleZip(const std::string& pickle,
                      const std::vector<std::pair<std::string, std::string>>& storages = {}) {
  std::vector<std::pair<std::string, std::string>> entries = {{"archive/data.pkl", pickle}};
  for (const auto& [key, data] : storages) entries.emplace_back("archive/data/" + key, data);
  entries.emplace_back("archive/version", "3\n");
  return MakeZip(entries);
}

// A parse of garbage must fail the way the API promises: a data or argument
// error naming the input, not an exception turned into INTERNAL.
template <typename T>
void ExpectCleanOutcome(const absl::StatusOr<T>& result, const std::string& what) {
  if (result.ok()) return;
  const absl::StatusCode code = result.status().code();
  EXPECT_TRUE(code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kInvalidArgument)
      << result.status();
  EXPECT_TRUE(absl::StartsWith(result.status().message(), what + ": ")) << result.status();
}

// Random edits of the kinds that break parsers: bytes, bits, magic numbers,
// truncation, deletion, duplication.
void Mutate(std::string& bytes, std::mt19937& rng) {
  static const uint32_t kInteresting[] = {0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF,
                                          0x80000000, 0xFFFFFFFF};
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits && !bytes.empty(); ++e) {
    const size_t pos = rng() % bytes.size();
    switch (rng() % 6) {
      case 0:
        bytes[pos] = static_cast<char>(rng());
        break;
      case 1:
        bytes[pos] = static_cast<char>(bytes[pos] ^ (1 << (rng() % 8)));
        break;
      case 2: {
        const uint32_t v = kInteresting[rng() % (sizeof(kInteresting) / sizeof(kInteresting[0]))];
        for (size_t k = 0; k < 4 && pos + k < bytes.size(); ++k) {
          bytes[pos + k] = static_cast<char>(v >> (8 * k));
        }
        break;
      }
      case 3:
        bytes.resize(pos);
        break;
      case 4:
        bytes.erase(pos, 1 + rng() % 16);
        break;
      case 5: {
        const size_t from = rng() % bytes.size();
        bytes.insert(pos, bytes.substr(from, 1 + rng() % 16));
        break;
      }
    }
  }
}

// Feeds kFuzzIterations mutants of `good` to `parse(bytes, what)`,
// each of which must fail cleanly or parse; returns how many parsed.
template <typename Parse>
int FuzzBytes(const std::string& good, uint32_t seed, const std::string& what, Parse parse) {
  std::mt19937 rng(seed);
  int ok = 0;
  for (int i = 0; i < kFuzzIterations; ++i) {
    std::string bytes = good;
    Mutate(bytes, rng);
    auto result = parse(bytes, what);
    ExpectCleanOutcome(result, what);
    ok += result.ok();
  }
  return ok;
}

class WeightsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl = (fs::temp_directory_path() / "ft_weights_test_XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      setup_error_ = "mkdtemp failed";
      return;
    }
    dir_ = tmpl;
    const std::string log = (dir_ / "make_fixtures.log").string();
    const std::string command = absl::StrCat("'", FT_WEIGHTS_PYTHON, "' '", FT_WEIGHTS_FIXTURES,
                                             "' '", dir_.string(), "' > '", log, "' 2>&1");
    if (std::system(command.c_str()) != 0) {
      setup_error_ = absl::StrCat("fixture script failed: ", command, "\n", ReadAll(log));
    }
  }
  static void TearDownTestSuite() {
    std::error_code ignored;
    if (!dir_.empty()) fs::remove_all(dir_, ignored);
  }
  void SetUp() override { ASSERT_TRUE(setup_error_.empty()) << setup_error_; }

  static std::string Path(const std::string& name) { return (dir_ / name).string(); }

  static fs::path dir_;
  static std::string setup_error_;
};

fs::path WeightsTest::dir_;
std::string WeightsTest::setup_error_;

TEST_F(WeightsTest, ResNet18CheckpointMatchesPyTorch) {
  auto tensors = ReadTorchCheckpoint(Path("resnet18.pt"));
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  const nlohmann::json manifest = nlohmann::json::parse(ReadAll(Path("resnet18.json")));
  ASSERT_EQ(tensors->size(), manifest.size());
  ASSERT_EQ(tensors->size(), 122u);  // resnet18: 62 params, 60 BatchNorm buffers
  for (size_t i = 0; i < tensors->size(); ++i) {
    const NamedTensor& nt = (*tensors)[i];
    const nlohmann::json& want = manifest[i];
    SCOPED_TRACE(nt.name);
    EXPECT_EQ(nt.name, want["name"].get<std::string>());
    EXPECT_EQ(DtypeName(nt.tensor.scalar_type()), want["dtype"].get<std::string>());
    EXPECT_EQ(Shape(nt.tensor), want["shape"].get<std::vector<int64_t>>());
    EXPECT_TRUE(nt.tensor.is_contiguous());
    const double sum = nt.tensor.to(at::kDouble).sum().item<double>();
    const double want_sum = want["sum"].get<double>();
    EXPECT_NEAR(sum, want_sum, 1e-9 * std::max(1.0, std::abs(want_sum)));
    EXPECT_EQ(nt.tensor.flatten()[0].to(at::kDouble).item<double>(), want["first"].get<double>());
  }
  // Whole tensors, bit for bit.
  for (const std::string name : {"conv1.weight", "bn1.running_var", "fc.bias"}) {
    const std::string want = ReadAll(Path(name + ".bin"));
    auto it = std::find_if(tensors->begin(), tensors->end(),
                           [&](const NamedTensor& nt) { return nt.name == name; });
    ASSERT_NE(it, tensors->end()) << name;
    ASSERT_EQ(it->tensor.nbytes(), want.size()) << name;
    EXPECT_EQ(std::memcmp(it->tensor.data_ptr(), want.data(), want.size()), 0) << name;
  }
  // BatchNorm's counter keeps its integer dtype and its value.
  auto counter = std::find_if(tensors->begin(), tensors->end(), [](const NamedTensor& nt) {
    return nt.name == "bn1.num_batches_tracked";
  });
  ASSERT_NE(counter, tensors->end());
  EXPECT_EQ(counter->tensor.scalar_type(), at::kLong);
  EXPECT_EQ(counter->tensor.dim(), 0);
  EXPECT_EQ(counter->tensor.item<int64_t>(), 1);
}

TEST_F(WeightsTest, ResNet18SafetensorsEqualsCheckpoint) {
  auto from_pt = ReadTorchCheckpoint(Path("resnet18.pt"));
  auto from_st = ReadSafetensors(Path("resnet18.safetensors"));
  ASSERT_TRUE(from_pt.ok()) << from_pt.status();
  ASSERT_TRUE(from_st.ok()) << from_st.status();
  ExpectSameTensors(*from_pt, *from_st);  // safetensors written in state_dict order
}

// torch.save(..., _use_new_zipfile_serialization=False) of the same state_dict.
TEST_F(WeightsTest, ResNet18LegacyEqualsZip) {
  auto from_zip = ReadTorchCheckpoint(Path("resnet18.pt"));
  auto from_legacy = ReadTorchCheckpoint(Path("resnet18_legacy.pt"));
  ASSERT_TRUE(from_zip.ok()) << from_zip.status();
  ASSERT_TRUE(from_legacy.ok()) << from_legacy.status();
  ExpectSameTensors(*from_zip, *from_legacy);
}

// Every dtype and view layout, read from the encodings of the same dict.
TEST_F(WeightsTest, DtypesAndViewsMatchPyTorch) {
  const nlohmann::json want = nlohmann::json::parse(ReadAll(Path("misc.json")));
  for (const std::string file :
       {"misc.pt", "misc_p4.pt", "misc_zip64.pt", "misc_legacy.pt", "misc_legacy_p4.pt"}) {
    SCOPED_TRACE(file);
    auto tensors = ReadTorchCheckpoint(Path(file));
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    ASSERT_EQ(tensors->size(), want.size());
    std::map<std::string, const nlohmann::json*> by_name;
    for (auto it = want.begin(); it != want.end(); ++it) by_name[it.key()] = &it.value();
    for (const NamedTensor& nt : *tensors) {
      SCOPED_TRACE(nt.name);
      ASSERT_EQ(by_name.count(nt.name), 1u);
      const nlohmann::json& w = *by_name[nt.name];
      EXPECT_EQ(DtypeName(nt.tensor.scalar_type()), w["dtype"].get<std::string>());
      EXPECT_EQ(Shape(nt.tensor), w["shape"].get<std::vector<int64_t>>());
      EXPECT_TRUE(nt.tensor.is_contiguous());
      const torch::Tensor flat = nt.tensor.to(at::kDouble).flatten().contiguous();
      const std::vector<double> values(flat.data_ptr<double>(),
                                       flat.data_ptr<double>() + flat.numel());
      EXPECT_EQ(values, w["values"].get<std::vector<double>>());
    }
  }
  // The order is the file's: the first and last keys of the dict.
  auto tensors = ReadTorchCheckpoint(Path("misc.pt"));
  ASSERT_TRUE(tensors.ok());
  EXPECT_EQ(tensors->front().name, "transposed");
  EXPECT_EQ(tensors->back().name, "param");
}

TEST_F(WeightsTest, HandWrittenPickleLoads) {
  auto tensors = ReadTorchCheckpoint(Path("handmade.pt"));
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 1u);
  EXPECT_TRUE(torch::equal((*tensors)[0].tensor, torch::tensor({2.0f, 3.0f, 4.0f})));
}

// Hand-written legacy files: one tensor on storage '0'[1:4], laid out as
// torch.save does; and two views of one storage as torch before 0.4 wrote
// them from Python 2 (Python 2 str, OrderedDict from a list of pairs,
// _rebuild_tensor). torch.load agrees on both (make_fixtures.py checks).
TEST_F(WeightsTest, HandWrittenLegacyFilesLoad) {
  auto one = ReadTorchCheckpoint(Path("legacy_handmade.pt"));
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->size(), 1u);
  EXPECT_TRUE(torch::equal((*one)[0].tensor, torch::tensor({2.0f, 3.0f, 4.0f})));

  auto py2 = ReadTorchCheckpoint(Path("legacy_py2.pt"));
  ASSERT_TRUE(py2.ok()) << py2.status();
  ASSERT_EQ(py2->size(), 2u);
  EXPECT_EQ((*py2)[0].name, "w");
  EXPECT_TRUE(torch::equal((*py2)[0].tensor, torch::tensor({2.0f, 3.0f, 4.0f})));
  EXPECT_EQ((*py2)[1].name, "m");
  EXPECT_TRUE(
      torch::equal((*py2)[1].tensor, torch::tensor({1.0f, 3.0f, 2.0f, 4.0f}).reshape({2, 2})));
}

struct BadFile {
  const char* file;
  absl::StatusCode code;
  const char* message;
};

TEST_F(WeightsTest, BadCheckpointsFailWithClearStatus) {
  const BadFile cases[] = {
      {"truncated.pt", absl::StatusCode::kDataLoss, "truncated zip"},
      {"random.bin", absl::StatusCode::kInvalidArgument, "not a torch checkpoint: not a zip"},
      {"plain_pickle.pt", absl::StatusCode::kInvalidArgument, "not a torch checkpoint"},
      {"tar_format.pt", absl::StatusCode::kInvalidArgument, "tar-format"},
      {"lying_size.pt", absl::StatusCode::kDataLoss, "claims 2147483632 bytes"},
      {"bad_crc.pt", absl::StatusCode::kDataLoss, "CRC-32"},
      {"compressed.pt", absl::StatusCode::kInvalidArgument, "is compressed"},
      {"forbidden.pt", absl::StatusCode::kInvalidArgument, "forbidden pickle global 'os.system'"},
      {"not_state_dict.pt", absl::StatusCode::kInvalidArgument, "entry 'model' is a dict"},
      {"torchscript.pt", absl::StatusCode::kInvalidArgument, "a TorchScript archive"},
      {"oob_view.pt", absl::StatusCode::kDataLoss, "outside its storage"},
      {"oob_stride.pt", absl::StatusCode::kDataLoss, "outside its storage"},
      {"big_numel.pt", absl::StatusCode::kDataLoss, "needs more than the 16 bytes"},
      {"missing_record.pt", absl::StatusCode::kDataLoss, "has no record"},
      {"negative_stride.pt", absl::StatusCode::kDataLoss, "negative"},
      {"bad_bool.pt", absl::StatusCode::kDataLoss, "bool tensor"},
      {"st_small.safetensors", absl::StatusCode::kInvalidArgument, "not a torch checkpoint"},
      {"legacy_truncated.pt", absl::StatusCode::kDataLoss, "truncated"},
      {"legacy_bad_magic.pt", absl::StatusCode::kInvalidArgument, "magic number"},
      {"legacy_bad_version.pt", absl::StatusCode::kInvalidArgument, "protocol version 1002"},
      {"legacy_module.pt", absl::StatusCode::kInvalidArgument,
       "forbidden pickle global 'torch.nn.modules.container.Sequential'"},
      {"legacy_view.pt", absl::StatusCode::kInvalidArgument, "view of another storage"},
      {"legacy_unlisted.pt", absl::StatusCode::kDataLoss, "'0' is used by a tensor but missing"},
      {"legacy_unreferenced.pt", absl::StatusCode::kDataLoss, "'9' is listed but no tensor"},
      {"legacy_listed_twice.pt", absl::StatusCode::kDataLoss, "'0' is listed twice"},
      {"legacy_wrong_count.pt", absl::StatusCode::kDataLoss, "holds 5 elements, its tensors say 4"},
      {"legacy_huge_numel.pt", absl::StatusCode::kDataLoss, "bytes of the file"},
      {"legacy_short_storage.pt", absl::StatusCode::kDataLoss, "needs 16 bytes"},
      {"legacy_trailing.pt", absl::StatusCode::kDataLoss, "1 bytes after the last storage"},
  };
  for (const BadFile& c : cases) {
    SCOPED_TRACE(c.file);
    auto result = ReadTorchCheckpoint(Path(c.file));
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), c.code) << result.status();
    EXPECT_TRUE(absl::StartsWith(result.status().message(), Path(c.file))) << result.status();
    EXPECT_TRUE(absl::StrContains(result.status().message(), c.message)) << result.status();
  }
  auto missing = ReadTorchCheckpoint(Path("no_such_file.pt"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
}

TEST_F(WeightsTest, SafetensorsSmallFile) {
  auto tensors = ReadSafetensors(Path("st_small.safetensors"));
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 2u);
  EXPECT_EQ((*tensors)[0].name, "a");
  EXPECT_TRUE(torch::equal((*tensors)[0].tensor, torch::tensor({1.0f, 2.0f})));
  EXPECT_EQ((*tensors)[1].name, "b");
  EXPECT_TRUE(torch::equal((*tensors)[1].tensor, torch::tensor({3.0f})));
}

TEST_F(WeightsTest, BadSafetensorsFailWithClearStatus) {
  const BadFile cases[] = {
      {"st_truncated.safetensors", absl::StatusCode::kDataLoss, "truncated safetensors"},
      {"st_huge_header.safetensors", absl::StatusCode::kInvalidArgument, "larger than the limit"},
      {"st_overlap.safetensors", absl::StatusCode::kDataLoss, "overlap"},
      {"st_gap.safetensors", absl::StatusCode::kDataLoss, "gap"},
      {"st_shape_mismatch.safetensors", absl::StatusCode::kDataLoss, "do not hold shape [3]"},
      {"st_bad_dtype.safetensors", absl::StatusCode::kInvalidArgument, "'F8_E4M3'"},
      {"st_dup_key.safetensors", absl::StatusCode::kDataLoss, "repeats the key 'a'"},
      {"st_bad_json.safetensors", absl::StatusCode::kDataLoss, "not a valid JSON object"},
      {"st_deep.safetensors", absl::StatusCode::kInvalidArgument, "nests deeper"},
      {"random.bin", absl::StatusCode::kInvalidArgument, "larger than the limit"},
      {"small.pt", absl::StatusCode::kInvalidArgument, ""},
  };
  for (const BadFile& c : cases) {
    SCOPED_TRACE(c.file);
    auto result = ReadSafetensors(Path(c.file));
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), c.code) << result.status();
    EXPECT_TRUE(absl::StartsWith(result.status().message(), Path(c.file))) << result.status();
    EXPECT_TRUE(absl::StrContains(result.status().message(), c.message)) << result.status();
  }
}

std::string Repeat(const std::string& s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

// Pickles written to attack the VM itself: deep nesting, cycles, huge claims.
TEST(TorchCheckpointPickle, HostilePicklesFailCleanly) {
  const std::string kStorage = "ctorch\nFloatStorage\n";
  struct Case {
    std::string name;
    std::string pickle;
    absl::StatusCode code;
    const char* message;
  };
  std::vector<Case> cases = {
      {"list holding itself", std::string("\x80\x02]q\x00h\x00" "a.", 9),
       absl::StatusCode::kInvalidArgument, "holds a list, not a state_dict"},
      {"deep nesting", "\x80\x02" + std::string(200000, ']') + std::string(199999, 'a') + ".",
       absl::StatusCode::kInvalidArgument, "holds a list"},
      {"dict bomb", "\x80\x02" + Repeat("}0", (1 << 20) + 1) + "}.",
       absl::StatusCode::kInvalidArgument, "too many dicts"},
      {"mark bomb", "\x80\x02" + std::string(100000, '('), absl::StatusCode::kInvalidArgument,
       "nested too deeply"},
      {"huge string claim", std::string("\x80\x02X\xff\xff\xff\xff", 7),
       absl::StatusCode::kDataLoss, "truncated data.pkl"},
      {"unset memo key", std::string("\x80\x02j\x10\x00\x00\x00.", 8), absl::StatusCode::kDataLoss,
       "memo key 16"},
      {"stack underflow", "\x80\x02s.", absl::StatusCode::kDataLoss, "stack underflow"},
      {"no STOP", "\x80\x02}", absl::StatusCode::kDataLoss, "no STOP"},
      {"trailing bytes", "\x80\x02}.}", absl::StatusCode::kDataLoss, "after STOP"},
      {"eval", "\x80\x02" "cbuiltins\neval\n", absl::StatusCode::kInvalidArgument,
       "'builtins.eval'"},
      {"unknown opcode", "\x80\x02" "I1\n.", absl::StatusCode::kInvalidArgument, "opcode 0x49"},
      {"invalid utf-8", std::string("\x80\x02X\x02\x00\x00\x00\xc3\x28.", 11),
       absl::StatusCode::kDataLoss, "UTF-8"},
      {"storage called", "\x80\x02" + kStorage + ")R.", absl::StatusCode::kInvalidArgument,
       "storage type called"},
      {"wide int", std::string("\x80\x02\x8a\x09", 4) + std::string(9, '\x01') + ".",
       absl::StatusCode::kInvalidArgument, "wider than 64 bits"},
      {"BUILD on a list", "\x80\x02]}b.", absl::StatusCode::kInvalidArgument, "BUILD on a list"},
      {"not a storage pid", "\x80\x02(K\x01K\x02tQ.", absl::StatusCode::kDataLoss,
       "persistent id"},
      {"OrderedDict of a non-pair", "\x80\x02" "ccollections\nOrderedDict\n]K\x01" "a\x85R.",
       absl::StatusCode::kDataLoss, "not a (key, value) pair"},
      {"OrderedDict of a list holding itself",
       std::string("\x80\x02" "ccollections\nOrderedDict\n]q\x00(h\x00" "e\x85R.", 37),
       absl::StatusCode::kDataLoss, "not a (key, value) pair"},
      {"negative BINSTRING", std::string("\x80\x02T\xff\xff\xff\xff.", 8),
       absl::StatusCode::kDataLoss, "negative length"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto result = ParseTorchCheckpoint(PickleZip(c.pickle), "mem.pt");
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), c.code) << result.status();
    EXPECT_TRUE(absl::StrContains(result.status().message(), c.message)) << result.status();
  }
}

// Byte-level mutations of a whole checkpoint. In a zip they mostly exercise
// the zip layer (the CRC catches edits inside records); a legacy file has no
// checksum, so they reach its pickles, storage counts and data.
TEST_F(WeightsTest, FuzzCheckpointBytes) {
  for (const std::string file : {"small.pt", "small_legacy.pt"}) {
    SCOPED_TRACE(file);
    const std::string good = ReadAll(Path(file));
    ASSERT_TRUE(ParseTorchCheckpoint(good, file).ok());
    const int ok = FuzzBytes(good, /*seed=*/20240601, "fuzz.pt", ParseTorchCheckpoint);
    EXPECT_LT(ok, kFuzzIterations);
    std::cout << file << " byte fuzz: " << ok << " of " << kFuzzIterations << " mutants parsed\n";
  }
}

// A legacy file cut anywhere is an error: every storage it names must be
// there, and nothing may follow the last.
TEST_F(WeightsTest, LegacyTruncatedAnywhereFails) {
  const std::string good = ReadAll(Path("small_legacy.pt"));
  const absl::string_view view(good);
  for (size_t len = 0; len < good.size(); ++len) {
    auto result = ParseTorchCheckpoint(view.substr(0, len), "cut.pt");
    ASSERT_FALSE(result.ok()) << len;
    ExpectCleanOutcome(result, "cut.pt");
  }
}

// Each storage's element count in the data section, made to lie: the
// reader must notice rather than read past or short of the storage.
TEST_F(WeightsTest, LegacyLyingStorageCountsFail) {
  const std::string good = ReadAll(Path("small_legacy.pt"));
  const nlohmann::json counts = nlohmann::json::parse(ReadAll(Path("small_legacy.json")));
  ASSERT_EQ(counts.size(), 9u);
  for (const nlohmann::json& c : counts) {
    const int64_t numel = c["numel"].get<int64_t>();
    const size_t offset = c["offset"].get<size_t>();
    for (const int64_t lie : {numel + 1, numel - 1, int64_t{-1}, int64_t{1} << 40, INT64_MAX,
                              INT64_MIN}) {
      SCOPED_TRACE(absl::StrCat(c["key"].get<std::string>(), " claims ", lie));
      std::string bytes = good;
      std::memcpy(bytes.data() + offset, &lie, sizeof lie);
      auto result = ParseTorchCheckpoint(bytes, "lie.pt");
      ASSERT_FALSE(result.ok());
      EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss) << result.status();
      EXPECT_TRUE(absl::StrContains(result.status().message(), "its tensors say"))
          << result.status();
    }
  }
}

// Mutations of data.pkl, re-zipped with valid CRCs, so the pickle VM sees them.
TEST_F(WeightsTest, FuzzPickle) {
  const fs::path parts = Path("small_parts");
  std::vector<std::pair<std::string, std::string>> records;
  std::string pickle;
  for (const auto& entry : fs::recursive_directory_iterator(parts)) {
    if (!entry.is_regular_file()) continue;
    const std::string name = fs::relative(entry.path(), parts).generic_string();
    if (absl::EndsWith(name, "/data.pkl")) {
      pickle = ReadAll(entry.path());
      records.insert(records.begin(), {name, ""});
    } else {
      records.emplace_back(name, ReadAll(entry.path()));
    }
  }
  ASSERT_FALSE(pickle.empty());
  records[0].second = pickle;
  auto good = ParseTorchCheckpoint(MakeZip(records), "small.pt");
  ASSERT_TRUE(good.ok()) << good.status();
  ASSERT_EQ(good->size(), 9u);

  static const char kOpcodes[] = "\x80\x95.c\x93qr\x94hj(012}])t\x85\x86\x87" "aesuX\x8c\x8dTU"
                                 "JKM\x8aG\x88\x89NRbQ";
  std::mt19937 rng(7);
  int ok = 0;
  for (int i = 0; i < kFuzzIterations; ++i) {
    std::string mutated = pickle;
    if (rng() % 3 == 0) {  // splice in opcodes, to reach deeper states
      const int n = 1 + static_cast<int>(rng() % 3);
      for (int k = 0; k < n; ++k) {
        mutated.insert(mutated.begin() + static_cast<std::ptrdiff_t>(rng() % mutated.size()),
                       kOpcodes[rng() % (sizeof(kOpcodes) - 1)]);
      }
    } else {
      Mutate(mutated, rng);
    }
    records[0].second = mutated;
    auto result = ParseTorchCheckpoint(MakeZip(records), "fuzz.pt");
    ExpectCleanOutcome(result, "fuzz.pt");
    if (result.ok()) {
      ++ok;
      for (const NamedTensor& nt : *result) EXPECT_TRUE(nt.tensor.is_contiguous());
    }
  }
  EXPECT_GT(ok, 0);      // some mutants stay valid (e.g. renamed tensors)
  EXPECT_LT(ok, kFuzzIterations);  // and most do not
  std::cout << "pickle fuzz: " << ok << " of " << kFuzzIterations << " mutants parsed\n";
}

// The real 46 MB checkpoints: truncated anywhere, and edited in place at the
// head (data.pkl; a legacy file's pickles) and, in the zip, the tail (the
// central directory and end record; a legacy file ends in tensor bytes,
// which no reader can check).
TEST_F(WeightsTest, FuzzResNet18TruncationAndMetadata) {
  for (const std::string file : {"resnet18.pt", "resnet18_legacy.pt"}) {
    SCOPED_TRACE(file);
    const bool zip = file == "resnet18.pt";
    std::string bytes = ReadAll(Path(file));
    const absl::string_view view(bytes);
    std::mt19937 rng(99);
    for (int i = 0; i < 200; ++i) {
      const size_t len = i < 100 ? view.size() * static_cast<size_t>(i) / 100 + rng() % 4096
                                 : view.size() - 1 - rng() % 70000;
      auto result = ParseTorchCheckpoint(view.substr(0, std::min(len, view.size() - 1)), "cut.pt");
      ASSERT_FALSE(result.ok());
      ExpectCleanOutcome(result, "cut.pt");
    }
    const size_t tail = 16000;
    for (int i = 0; i < 100; ++i) {
      const size_t pos = rng() % 2 || !zip ? rng() % 16000 : bytes.size() - 1 - rng() % tail;
      const char saved = bytes[pos];
      bytes[pos] = static_cast<char>(rng());
      ExpectCleanOutcome(ParseTorchCheckpoint(bytes, "edit.pt"), "edit.pt");
      bytes[pos] = saved;
    }
  }
}

TEST_F(WeightsTest, FuzzSafetensors) {
  const std::string good = ReadAll(Path("st_small.safetensors"));
  const int ok = FuzzBytes(good, /*seed=*/3, "fuzz.safetensors",
                           [](absl::string_view bytes, const std::string& what) {
                             return ParseSafetensors(bytes, what);
                           });
  EXPECT_LT(ok, kFuzzIterations);
}

}  // namespace
}  // namespace ft::worker
