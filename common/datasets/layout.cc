#include "common/datasets/layout.h"

#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/datasets/sandbox.h"
#include "common/util/status.h"

namespace ft::datasets {
namespace fs = std::filesystem;
namespace {

constexpr uint32_t kIdxLabelMagic = 0x00000801;
constexpr uint32_t kIdxImageMagic = 0x00000803;
// Bounds on what an IDX header may claim, so a lying header cannot make us
// allocate without limit.
constexpr int64_t kMaxIdxItems = 50'000'000;
constexpr int kMaxIdxSide = 4096;
constexpr int64_t kMaxIdxBytes = int64_t{8} << 30;

// Reads IDX files, compressed or not (zlib reads plain files transparently).
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path), f_(gzopen(path.c_str(), "rb")) {}
  ~GzReader() {
    if (f_) gzclose(f_);
  }
  bool ok() const { return f_ != nullptr; }
  absl::Status Read(void* out, size_t n) {
    auto* p = static_cast<uint8_t*>(out);
    while (n > 0) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n, 1u << 30));
      int got = gzread(f_, p, chunk);
      if (got <= 0) {
        return absl::DataLossError(absl::StrCat(path_, " is truncated or corrupt"));
      }
      p += got;
      n -= static_cast<size_t>(got);
    }
    return absl::OkStatus();
  }
  absl::StatusOr<uint32_t> ReadU32() {
    uint8_t b[4];
    FT_RETURN_IF_ERROR(Read(b, 4));
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
  }

 private:
  std::string path_;
  gzFile f_;
};

std::string Lower(std::string s) { return absl::AsciiStrToLower(s); }

// Files of `dir` in name order (deterministic across machines).
std::vector<fs::path> SortedEntries(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<fs::path> SortedSubdirs(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& p : SortedEntries(dir)) {
    if (fs::is_directory(p, ec) && p.filename().string()[0] != '.') out.push_back(p);
  }
  return out;
}

// Checks a path the scan found (not one a manifest wrote), named as found.
absl::Status CheckInside(const DatasetSandbox& sandbox, const fs::path& path) {
  return sandbox.ResolveInside(path.string(), path.string()).status();
}

// Image files below `dir`, recursively, sorted; each inside the sandbox.
// Symlinked folders below `dir` are not descended into.
absl::StatusOr<std::vector<std::string>> ImagesUnder(const fs::path& dir, const DatasetSandbox& sandbox) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    if (it->is_regular_file(ec) && IsImageFile(it->path().string())) {
      out.push_back(it->path().string());
    }
  }
  std::sort(out.begin(), out.end());
  for (const auto& path : out) FT_RETURN_IF_ERROR(CheckInside(sandbox, path));
  return out;
}

// Class name -> sorted image files, for an ImageFolder split directory. A
// class folder is checked before it is listed, so that a symlink to a
// folder outside does not list it.
absl::StatusOr<std::map<std::string, std::vector<std::string>>> ScanClassDirs(const fs::path& dir,
                                                                              const DatasetSandbox& sandbox) {
  FT_RETURN_IF_ERROR(CheckInside(sandbox, dir));
  std::map<std::string, std::vector<std::string>> out;
  for (const auto& sub : SortedSubdirs(dir)) {
    FT_RETURN_IF_ERROR(CheckInside(sandbox, sub));
    FT_ASSIGN_OR_RETURN(out[sub.filename().string()], ImagesUnder(sub, sandbox));
  }
  return out;
}

struct Raw {
  // Per split: (class name, sample) in a deterministic order.
  std::vector<std::pair<std::string, Sample>> train, val, test;
  std::string format;
  std::string val_source;
  std::string test_source;
  // Class order when the format defines it (IDX: numeric).
  std::vector<std::string> natural_classes;
};

void AddFolder(const std::map<std::string, std::vector<std::string>>& classes,
               std::vector<std::pair<std::string, Sample>>* out) {
  for (const auto& [name, files] : classes) {
    for (const auto& f : files) out->push_back({name, Sample{f, 0, -1}});
  }
}

absl::Status ScanImageFolder(const fs::path& root, const DatasetSandbox& sandbox, Raw* raw) {
  raw->format = "imagefolder";
  std::error_code ec;
  auto add = [&sandbox](const fs::path& dir, std::vector<std::pair<std::string, Sample>>* out) -> absl::Status {
    FT_ASSIGN_OR_RETURN(auto classes, ScanClassDirs(dir, sandbox));
    AddFolder(classes, out);
    return absl::OkStatus();
  };
  if (fs::is_directory(root / "train", ec)) {
    FT_RETURN_IF_ERROR(add(root / "train", &raw->train));
    for (const char* name : {"val", "valid", "validation"}) {
      if (fs::is_directory(root / name, ec)) {
        FT_RETURN_IF_ERROR(add(root / name, &raw->val));
        raw->val_source = absl::StrCat(name, "/ folder");
        break;
      }
    }
    if (fs::is_directory(root / "test", ec)) {
      FT_RETURN_IF_ERROR(add(root / "test", &raw->test));
      raw->test_source = "test/ folder";
    }
  } else {
    FT_RETURN_IF_ERROR(add(root, &raw->train));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> ScanIdx(const fs::path& root, const DatasetSandbox& sandbox, Raw* raw) {
  // prefix ("train", "t10k") -> (images, labels)
  std::map<std::string, std::pair<std::string, std::string>> sets;
  for (const auto& p : SortedEntries(root)) {
    std::string name = p.filename().string();
    std::string base(absl::StripSuffix(name, ".gz"));
    if (absl::EndsWith(base, "-images-idx3-ubyte")) {
      sets[base.substr(0, base.size() - strlen("-images-idx3-ubyte"))].first = p.string();
    } else if (absl::EndsWith(base, "-labels-idx1-ubyte")) {
      sets[base.substr(0, base.size() - strlen("-labels-idx1-ubyte"))].second = p.string();
    }
  }
  if (sets.empty()) return false;
  raw->format = "idx";
  int max_label = -1;
  for (const auto& [prefix, files] : sets) {
    if (files.first.empty() || files.second.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "IDX set '", prefix, "' in ", root.string(), " needs both an images and a labels file"));
    }
    std::vector<std::pair<std::string, Sample>>* split = nullptr;
    if (prefix == "train") {
      split = &raw->train;
    } else if (prefix == "t10k" || prefix == "test" || prefix == "val") {
      split = &raw->val;
      raw->val_source = absl::StrCat(prefix, " files");
    } else {
      continue;
    }
    FT_RETURN_IF_ERROR(CheckInside(sandbox, files.first));
    FT_RETURN_IF_ERROR(CheckInside(sandbox, files.second));
    FT_ASSIGN_OR_RETURN(std::vector<uint8_t> labels, ReadIdxLabels(files.second));
    for (size_t i = 0; i < labels.size(); ++i) {
      split->push_back({absl::StrCat(labels[i]), Sample{files.first, 0, static_cast<int64_t>(i)}});
      max_label = std::max<int>(max_label, labels[i]);
    }
  }
  for (int i = 0; i <= max_label; ++i) raw->natural_classes.push_back(absl::StrCat(i));
  return true;
}

absl::Status ScanCsv(const fs::path& manifest, const DatasetSandbox& sandbox, Raw* raw) {
  raw->format = "csv";
  FT_RETURN_IF_ERROR(CheckInside(sandbox, manifest));
  std::ifstream in(manifest);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", manifest.string()));
  const fs::path base = manifest.parent_path();
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty() || l[0] == '#') continue;
    std::vector<std::string> cols = absl::StrSplit(l, absl::MaxSplits(',', 1));
    if (cols.size() != 2) {
      return absl::FailedPreconditionError(absl::StrCat(
          manifest.string(), " line ", line_no, ": expected 'path,label', got '", l, "'"));
    }
    std::string path(absl::StripAsciiWhitespace(cols[0]));
    std::string label(absl::StripAsciiWhitespace(cols[1]));
    if (line_no == 1 && Lower(path) == "path" && Lower(label) == "label") continue;
    fs::path p(path);
    if (p.is_relative()) p = base / p;
    // The row as written, since that is what the manifest's author must fix.
    FT_RETURN_IF_ERROR(
        sandbox.ResolveInside(p.string(), absl::StrCat(manifest.string(), " line ", line_no, ": \"", path, "\""))
            .status());
    raw->train.push_back({label, Sample{p.lexically_normal().string(), 0, -1}});
  }
  return absl::OkStatus();
}

// The dataset's own folder, or the roots it was given (LayoutOptions::roots).
DatasetSandbox MakeSandbox(const fs::path& own_folder, const std::vector<std::string>& roots) {
  if (roots.empty()) return DatasetSandbox({own_folder.string()}, absl::StrCat("the dataset's folder ", own_folder.string()));
  return DatasetSandbox(roots, absl::StrCat("the dataset roots (", absl::StrJoin(roots, ", "), ")"));
}

}  // namespace

bool IsImageFile(const std::string& path) {
  static const std::set<std::string> kExt = {".jpg", ".jpeg", ".png", ".bmp", ".webp",
                                             ".tif", ".tiff", ".pgm", ".ppm", ".pbm"};
  return kExt.count(Lower(fs::path(path).extension().string())) > 0;
}

absl::StatusOr<std::vector<uint8_t>> ReadIdxLabels(const std::string& path) {
  GzReader r(path);
  if (!r.ok()) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  FT_ASSIGN_OR_RETURN(uint32_t magic, r.ReadU32());
  if (magic != kIdxLabelMagic) {
    return absl::DataLossError(absl::StrCat(path, " is not an IDX label file (magic ", magic, ")"));
  }
  FT_ASSIGN_OR_RETURN(uint32_t count, r.ReadU32());
  if (count > kMaxIdxItems) {
    return absl::DataLossError(absl::StrCat(path, " claims ", count, " labels, more than allowed"));
  }
  std::vector<uint8_t> labels(count);
  FT_RETURN_IF_ERROR(r.Read(labels.data(), labels.size()));
  return labels;
}

absl::StatusOr<IdxImages> ReadIdxImages(const std::string& path) {
  GzReader r(path);
  if (!r.ok()) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  FT_ASSIGN_OR_RETURN(uint32_t magic, r.ReadU32());
  if (magic != kIdxImageMagic) {
    return absl::DataLossError(absl::StrCat(path, " is not an IDX image file (magic ", magic, ")"));
  }
  IdxImages out;
  FT_ASSIGN_OR_RETURN(uint32_t count, r.ReadU32());
  FT_ASSIGN_OR_RETURN(uint32_t rows, r.ReadU32());
  FT_ASSIGN_OR_RETURN(uint32_t cols, r.ReadU32());
  if (count > kMaxIdxItems || rows == 0 || cols == 0 || rows > kMaxIdxSide || cols > kMaxIdxSide ||
      int64_t{count} * rows * cols > kMaxIdxBytes) {
    return absl::DataLossError(absl::StrCat(path, " has an implausible header: ", count, " images of ",
                                            rows, "x", cols));
  }
  out.count = count;
  out.rows = static_cast<int>(rows);
  out.cols = static_cast<int>(cols);
  out.pixels.resize(static_cast<size_t>(count) * rows * cols);
  FT_RETURN_IF_ERROR(r.Read(out.pixels.data(), out.pixels.size()));
  return out;
}

absl::StatusOr<DatasetLayout> ScanDataset(const std::string& path, const LayoutOptions& options) {
  std::error_code ec;
  const fs::path root(path);
  if (!fs::exists(root, ec)) return absl::NotFoundError(absl::StrCat("dataset ", path, " does not exist"));
  const bool is_file = fs::is_regular_file(root, ec);
  const DatasetSandbox sandbox = MakeSandbox(is_file ? root.parent_path() : root, options.roots);
  FT_RETURN_IF_ERROR(sandbox.ResolveInside(path, absl::StrCat("dataset ", path)).status());
  Raw raw;
  if (is_file) {
    if (Lower(root.extension().string()) != ".csv") {
      return absl::FailedPreconditionError(
          absl::StrCat("dataset ", path, " is a file but not a .csv manifest"));
    }
    FT_RETURN_IF_ERROR(ScanCsv(root, sandbox, &raw));
  } else if (fs::is_regular_file(root / "manifest.csv", ec)) {
    FT_RETURN_IF_ERROR(ScanCsv(root / "manifest.csv", sandbox, &raw));
  } else {
    FT_ASSIGN_OR_RETURN(bool is_idx, ScanIdx(root, sandbox, &raw));
    if (!is_idx) FT_RETURN_IF_ERROR(ScanImageFolder(root, sandbox, &raw));
  }

  // Classes: those with training images, in natural (IDX) or sorted order.
  std::map<std::string, int> train_counts;
  for (const auto& [name, s] : raw.train) ++train_counts[name];
  std::vector<std::string> classes;
  if (!options.classes.empty()) {
    for (const auto& c : options.classes) {
      if (!train_counts.count(c)) {
        std::vector<std::string> known;
        for (const auto& [name, n] : train_counts) known.push_back(name);
        return absl::InvalidArgumentError(absl::StrCat(
            "dataset_uri: class '", c, "' has no training images in ", path,
            " (classes: ", absl::StrJoin(known, ","), ")"));
      }
      classes.push_back(c);
    }
  } else if (!raw.natural_classes.empty()) {
    for (const auto& c : raw.natural_classes) {
      if (train_counts.count(c)) classes.push_back(c);
    }
  } else {
    for (const auto& [name, n] : train_counts) classes.push_back(name);
  }
  if (raw.train.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset ", path, " has no training images (looked for ", raw.format,
        raw.format == "imagefolder" ? " layout: <class>/<image> or train/<class>/<image>" : "",
        ")"));
  }
  if (classes.size() < 2) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset ", path, " has ", classes.size(), " class", classes.size() == 1 ? " ('" + classes[0] + "')" : "",
        " with images; fine-tuning a classifier needs at least 2"));
  }
  std::map<std::string, int> index;
  for (size_t i = 0; i < classes.size(); ++i) index[classes[i]] = static_cast<int>(i);

  DatasetLayout layout;
  layout.format = raw.format;
  layout.classes = classes;
  auto take = [&](const std::vector<std::pair<std::string, Sample>>& in, std::vector<Sample>* out) {
    for (const auto& [name, s] : in) {
      auto it = index.find(name);
      if (it == index.end()) continue;
      Sample copy = s;
      copy.label = it->second;
      out->push_back(std::move(copy));
    }
  };
  if (options.val_from_split && !raw.val.empty()) {
    if (!raw.test.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset_uri: val=split: ", path, " has both a ", raw.val_source,
          " and a test split, so its val images would have no place; drop val=split"));
    }
    raw.test = std::move(raw.val);
    raw.val.clear();
    raw.test_source = raw.val_source;
  }
  take(raw.train, &layout.train);
  take(raw.val, &layout.val);
  take(raw.test, &layout.test);
  if (!layout.test.empty()) layout.test_source = raw.test_source;

  std::mt19937_64 rng(options.seed);
  // Stratified: shuffle within each class with the job's seed.
  auto by_class = [&](std::vector<Sample>& samples) {
    std::vector<std::vector<Sample>> per(classes.size());
    for (auto& s : samples) per[s.label].push_back(std::move(s));
    for (auto& v : per) std::shuffle(v.begin(), v.end(), rng);
    return per;
  };
  if (layout.val.empty()) {
    const float frac = options.val_split > 0 ? options.val_split : 0.2f;
    auto per = by_class(layout.train);
    layout.train.clear();
    for (auto& v : per) {
      size_t n_val = static_cast<size_t>(v.size() * frac + 0.5f);
      if (n_val == 0 && v.size() >= 2) n_val = 1;
      for (size_t i = 0; i < v.size(); ++i) (i < n_val ? layout.val : layout.train).push_back(v[i]);
    }
    layout.val_source = absl::StrCat(static_cast<int>(frac * 100 + 0.5f), "% split of train");
  } else {
    layout.val_source = raw.val_source;
  }
  auto cap = [&](std::vector<Sample>* samples, int max_per_class) {
    if (max_per_class <= 0) return;
    auto per = by_class(*samples);
    samples->clear();
    for (auto& v : per) {
      if (static_cast<int>(v.size()) > max_per_class) v.resize(static_cast<size_t>(max_per_class));
      for (auto& s : v) samples->push_back(std::move(s));
    }
  };
  cap(&layout.train, options.max_per_class);
  cap(&layout.val, options.max_val_per_class);
  if (layout.val.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("dataset ", path, " has no validation images for the chosen classes"));
  }
  return layout;
}

}  // namespace ft::datasets
