#ifndef FT_WORKER_DATA_IMAGES_H_
#define FT_WORKER_DATA_IMAGES_H_

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "absl/status/statusor.h"
#include "server/datasets/layout.h"

namespace ft::worker {

// Decoded images in memory: 8-bit, 1 channel (grayscale) or 3 (RGB).
struct ImageSet {
  std::vector<cv::Mat> images;
  std::vector<int64_t> labels;
  // Files that could not be decoded and were skipped (skip_bad only).
  std::vector<std::string> skipped;
};

struct DecodeOptions {
  // Images whose shorter side exceeds this are shrunk to it on load (the
  // eval transform's resize size), which keeps memory and transform cost
  // bounded without changing what the model sees. 0 keeps full size.
  int max_short_side = 0;
  int threads = 1;
  // Skip undecodable files (listed in ImageSet::skipped) instead of failing.
  bool skip_bad = false;
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
};

// The shorter side the eval transform resizes to: image_size * 256 / 224.
int EvalResizeSize(int image_size);

// Writes the transformed image as normalised float32 CHW (3 channels;
// grayscale replicated) to `out` (3 * image_size^2 floats).
void TransformInto(const cv::Mat& image, const TransformOptions& options, std::mt19937_64* rng,
                   float* out);

}  // namespace ft::worker

#endif  // FT_WORKER_DATA_IMAGES_H_
