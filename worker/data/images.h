#ifndef FT_WORKER_DATA_IMAGES_H_
#define FT_WORKER_DATA_IMAGES_H_

#include <array>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "absl/status/statusor.h"
#include "common/datasets/layout.h"

namespace ft::worker {

// Decoded images: 8-bit, 1 channel (grayscale) or 3 (RGB). Those that fit
// the decode cache budget are kept in memory; the others are decoded again
// from their file each time they are needed.
struct ImageSet {
  // An empty Mat where the image is not kept (see Get).
  std::vector<cv::Mat> images;
  std::vector<int64_t> labels;
  // The image file of each entry ("" for IDX records, which are always kept).
  std::vector<std::string> paths;
  // Files that could not be decoded and were skipped (skip_bad only).
  std::vector<std::string> skipped;
  int max_short_side = 0;   // as DecodeOptions, for decoding again
  int64_t cached_bytes = 0;  // pixels kept in memory
  int64_t uncached = 0;      // entries decoded again when needed

  size_t size() const { return images.size(); }
  // Entry i: the kept copy, or the file decoded (and shrunk) again. Throws
  // std::runtime_error naming the file when it no longer decodes.
  cv::Mat Get(size_t i) const;
};

struct DecodeOptions {
  // Images whose shorter side exceeds this are shrunk to it on load (the
  // eval transform's resize size), which keeps memory and transform cost
  // bounded without changing what the model sees. 0 keeps full size.
  int max_short_side = 0;
  int threads = 1;
  // Skip undecodable files (listed in ImageSet::skipped) instead of failing.
  bool skip_bad = false;
  // Decoded pixels kept in memory, at most; images beyond it are decoded
  // again every epoch. Negative: no limit.
  int64_t cache_budget_bytes = -1;
  // Called with each image as decoded (full size, before any shrinking),
  // from the decoding threads: it must be thread-safe.
  std::function<void(size_t index, const cv::Mat& image)> inspect;
};

// Decodes `samples` (image files through OpenCV, or IDX records). 16-bit
// images are scaled to 8 bits, alpha is dropped, grayscale stays 1 channel.
// FAILED_PRECONDITION naming the first few files when any cannot be decoded,
// unless skip_bad.
absl::StatusOr<ImageSet> DecodeSamples(const std::vector<datasets::Sample>& samples,
                                       const DecodeOptions& options);

// Decodes one image file as DecodeSamples does (8-bit gray or RGB).
// INVALID_ARGUMENT naming the file when it cannot be decoded.
absl::StatusOr<cv::Mat> DecodeImageFile(const std::string& path);

struct TransformOptions {
  int image_size = 224;
  bool train = false;  // random resized crop + flip; else resize + centre crop
  std::array<float, 3> mean = {0.485f, 0.456f, 0.406f};
  std::array<float, 3> std = {0.229f, 0.224f, 0.225f};
  // RandomResizedCrop's area and aspect-ratio ranges (torchvision defaults).
  float min_scale = 0.08f;
  float max_scale = 1.0f;
  // Train only, after the crop and flip: a random rotation in
  // [-rotation_degrees, rotation_degrees] (torchvision RandomRotation:
  // counter-clockwise, nearest neighbour, black fill), then colour jitter
  // (ColorJitter(f, f, f): brightness, contrast and saturation factors drawn
  // from [max(0, 1 - f), 1 + f], applied in a random order). 0 disables each.
  float rotation_degrees = 0;
  float color_jitter = 0;
};

// The shorter side the eval transform resizes to: image_size * 256 / 224.
int EvalResizeSize(int image_size);

// Writes the transformed image as normalised float32 CHW (3 channels;
// grayscale replicated) to `out` (3 * image_size^2 floats).
void TransformInto(const cv::Mat& image, const TransformOptions& options, std::mt19937_64* rng,
                   float* out);

}  // namespace ft::worker

#endif  // FT_WORKER_DATA_IMAGES_H_
