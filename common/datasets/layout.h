#ifndef FT_COMMON_DATASETS_LAYOUT_H_
#define FT_COMMON_DATASETS_LAYOUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ft::datasets {

// One labelled example: an image file, or record `index` of an IDX file.
struct Sample {
  std::string path;
  int label = 0;
  int64_t index = -1;  // >= 0 for IDX records
};

// Which files make up a dataset, and their labels; nothing is decoded.
// Shared by the server's pre-flight and the worker's loader, so that both
// see exactly the same split.
struct DatasetLayout {
  std::string format;                // imagefolder, idx, csv
  std::vector<std::string> classes;  // label i is classes[i]
  std::vector<Sample> train;
  std::vector<Sample> val;
  std::vector<Sample> test;
  // How val was made: "val/ folder", "t10k files", or "20% split of train".
  std::string val_source;
  // Where test came from ("test/ folder", "t10k files"); empty without one.
  std::string test_source;
};

struct LayoutOptions {
  // Keep only these classes (by name), in this order; empty keeps all.
  std::vector<std::string> classes;
  // Seeded, stratified cap on train images per class; 0 means no cap.
  int max_per_class = 0;
  // Cap on val images per class; 0 means no cap.
  int max_val_per_class = 0;
  // Fraction of train held out when the dataset has no val split.
  float val_split = 0.2f;
  // Validation is always a val_split of train; the dataset's own val images
  // (t10k files, a val/ folder) become its test split instead, so that the
  // test figures come from images that chose nothing (URI option val=split).
  bool val_from_split = false;
  uint64_t seed = 0;
  // The sandbox: every file the dataset names (images, IDX files, the
  // manifest, the folders listed) must resolve inside one of these folders,
  // after symlinks. Empty: inside the dataset's own folder (`path`, or a
  // manifest's folder), as for an extracted archive; file:// datasets pass
  // the server's --dataset-roots, so that a manifest may name images in a
  // sibling folder of the same roots.
  std::vector<std::string> roots;
};

// Scans `path` (a directory, or a .csv manifest) and detects its format:
//  - IDX: *-images-idx3-ubyte[.gz] with matching *-labels-idx1-ubyte[.gz];
//    train-* is train, t10k-* (or test-*) is val (test with val_from_split);
//  - CSV: a manifest "path,label" (a header row is allowed), paths relative
//    to the manifest;
//  - ImageFolder: train/<class>/*, val/<class>/*, optional test/<class>/*,
//    or flat <class>/* split by val_split (stratified, seeded).
// Errors: NOT_FOUND if missing, FAILED_PRECONDITION naming the reason when
// the data cannot train (no images, fewer than two classes), DATA_LOSS for
// corrupt IDX headers, INVALID_ARGUMENT for an unknown class in options, or
// for val_from_split on a dataset that has both val and test splits.
// PERMISSION_DENIED naming the first entry that leaves `options.roots`
// (DatasetSandbox's messages), before any file outside is opened or listed.
absl::StatusOr<DatasetLayout> ScanDataset(const std::string& path, const LayoutOptions& options);

// True for the file extensions decoded as images.
bool IsImageFile(const std::string& path);

// Reads an IDX label file (optionally gzip-compressed), at most max_items.
absl::StatusOr<std::vector<uint8_t>> ReadIdxLabels(const std::string& path);

// Reads the whole of an IDX image file: dims are {count, rows, cols}.
struct IdxImages {
  int64_t count = 0;
  int rows = 0;
  int cols = 0;
  std::vector<uint8_t> pixels;  // count * rows * cols
};
absl::StatusOr<IdxImages> ReadIdxImages(const std::string& path);

}  // namespace ft::datasets

#endif  // FT_COMMON_DATASETS_LAYOUT_H_
