#include "worker/data/images.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ft::worker {
namespace {

constexpr int kNamedFailures = 5;

// Shrinks so that the shorter side is at most `max_short`, like
// torchvision's Resize(int): the shorter side becomes exactly `size` and the
// longer one int(size * long / short).
cv::Mat ResizeShortSide(const cv::Mat& img, int size) {
  const int h = img.rows, w = img.cols;
  int oh, ow;
  if (w <= h) {
    ow = size;
    oh = static_cast<int>(static_cast<int64_t>(size) * h / w);
  } else {
    oh = size;
    ow = static_cast<int>(static_cast<int64_t>(size) * w / h);
  }
  if (oh == h && ow == w) return img;
  cv::Mat out;
  cv::resize(img, out, cv::Size(ow, oh), 0, 0, (ow < w) ? cv::INTER_AREA : cv::INTER_LINEAR);
  return out;
}

// DecodeOptions::max_short_side: shrinks images whose shorter side exceeds
// it (0 keeps full size).
cv::Mat ShrinkToShortSide(const cv::Mat& img, int max_short_side) {
  if (max_short_side <= 0 || std::min(img.rows, img.cols) <= max_short_side) return img;
  return ResizeShortSide(img, max_short_side);
}

cv::Mat ToGrayOrRgb8(const cv::Mat& raw) {
  cv::Mat img = raw;
  if (img.depth() == CV_16U) {
    img.convertTo(img, CV_8U, 1.0 / 257.0);
  } else if (img.depth() != CV_8U) {
    cv::Mat tmp;
    cv::normalize(img, tmp, 0, 255, cv::NORM_MINMAX, CV_8U);
    img = tmp;
  }
  cv::Mat out;
  switch (img.channels()) {
    case 1: out = img; break;
    case 3: cv::cvtColor(img, out, cv::COLOR_BGR2RGB); break;
    case 4: cv::cvtColor(img, out, cv::COLOR_BGRA2RGB); break;
    default: return cv::Mat();
  }
  return out;
}

// torchvision RandomRotation(degrees): angle ~ U(-degrees, degrees),
// counter-clockwise about the centre, nearest neighbour, zero fill.
cv::Mat RandomRotate(const cv::Mat& img, float degrees, std::mt19937_64* rng) {
  const double angle = std::uniform_real_distribution<double>(-degrees, degrees)(*rng);
  const cv::Point2f centre(static_cast<float>(img.cols - 1) / 2.0f, static_cast<float>(img.rows - 1) / 2.0f);
  cv::Mat out;
  cv::warpAffine(img, out, cv::getRotationMatrix2D(centre, angle, 1.0), img.size(), cv::INTER_NEAREST,
                 cv::BORDER_CONSTANT, cv::Scalar::all(0));
  return out;
}

// torchvision's rgb_to_grayscale weights.
cv::Mat Gray(const cv::Mat& rgb) {
  if (rgb.channels() == 1) return rgb.clone();
  cv::Mat gray;
  cv::transform(rgb, gray, cv::Matx13f(0.2989f, 0.587f, 0.114f));
  return gray;
}

// torchvision ColorJitter(f, f, f) on float pixels in [0, 255]: each
// adjustment blends with a reference (black, the mean grey, the grey image)
// by its factor and clamps.
cv::Mat ColorJitter(const cv::Mat& img8, float f, std::mt19937_64* rng) {
  std::uniform_real_distribution<double> factor(std::max(0.0, 1.0 - f), 1.0 + f);
  std::array<int, 3> ops = {0, 1, 2};
  std::shuffle(ops.begin(), ops.end(), *rng);
  const double brightness = factor(*rng), contrast = factor(*rng), saturation = factor(*rng);
  cv::Mat img;
  img8.convertTo(img, CV_32F);
  for (int op : ops) {
    if (op == 0) {
      img *= brightness;
    } else if (op == 1) {
      const double mean = cv::mean(Gray(img))[0];
      img = img * contrast + cv::Scalar::all((1.0 - contrast) * mean);
    } else if (img.channels() == 3) {
      cv::Mat gray3;
      cv::cvtColor(Gray(img), gray3, cv::COLOR_GRAY2RGB);
      cv::addWeighted(img, saturation, gray3, 1.0 - saturation, 0.0, img);
    }
    cv::Mat flat = img.reshape(1);  // the same pixels, one channel: clamp them all
    cv::max(flat, 0.0, flat);
    cv::min(flat, 255.0, flat);
  }
  cv::Mat out;
  img.convertTo(out, CV_8U);
  return out;
}

}  // namespace

int EvalResizeSize(int image_size) { return image_size * 256 / 224; }

absl::StatusOr<cv::Mat> DecodeImageFile(const std::string& path) {
  try {
    cv::Mat raw = cv::imread(path, cv::IMREAD_UNCHANGED);
    if (raw.empty() || raw.rows < 1 || raw.cols < 1) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": not a decodable image"));
    }
    cv::Mat img = ToGrayOrRgb8(raw);
    if (img.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": unsupported channel count ", raw.channels()));
    }
    return img;
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
}

absl::StatusOr<ImageSet> DecodeSamples(const std::vector<datasets::Sample>& samples,
                                       const DecodeOptions& options) {
  ImageSet set;
  set.images.resize(samples.size());
  set.labels.resize(samples.size());
  set.paths.resize(samples.size());
  set.max_short_side = options.max_short_side;
  std::atomic<int64_t> cached_bytes{0};
  // IDX files are read once each, then sliced.
  std::map<std::string, std::shared_ptr<datasets::IdxImages>> idx;
  for (const auto& s : samples) {
    if (s.index >= 0 && !idx.count(s.path)) {
      auto images = datasets::ReadIdxImages(s.path);
      if (!images.ok()) return images.status();
      idx[s.path] = std::make_shared<datasets::IdxImages>(*std::move(images));
    }
  }
  std::mutex mu;
  std::vector<std::string> failures;
  std::vector<char> failed(samples.size(), 0);  // entry i is written by one thread only
  std::atomic<size_t> next{0};
  auto work = [&]() {
    cv::setNumThreads(1);
    for (size_t i = next++; i < samples.size(); i = next++) {
      const auto& s = samples[i];
      set.labels[i] = s.label;
      cv::Mat img;
      std::string why;
      if (s.index >= 0) {
        const auto& f = *idx.at(s.path);
        if (s.index >= f.count) {
          why = "record out of range";
        } else {
          img = cv::Mat(f.rows, f.cols, CV_8UC1,
                        const_cast<uint8_t*>(f.pixels.data()) + s.index * f.rows * f.cols)
                    .clone();
        }
      } else {
        auto decoded = DecodeImageFile(s.path);
        if (decoded.ok()) {
          img = *std::move(decoded);
        } else {
          why = std::string(decoded.status().message());
        }
      }
      if (img.empty()) {
        failed[i] = 1;
        std::lock_guard<std::mutex> lock(mu);
        failures.push_back(s.index >= 0 ? absl::StrCat(s.path, "#", s.index) : s.path);
        continue;
      }
      if (options.inspect) options.inspect(i, img);
      img = ShrinkToShortSide(img, options.max_short_side);
      const auto bytes = static_cast<int64_t>(img.total() * img.elemSize());
      const int64_t before = cached_bytes.fetch_add(bytes);
      if (s.index < 0) {
        set.paths[i] = s.path;
        if (options.cache_budget_bytes >= 0 && before + bytes > options.cache_budget_bytes) {
          // Over the budget: decoded once to check it, decoded again when used.
          cached_bytes -= bytes;
          continue;
        }
      }
      set.images[i] = std::move(img);
    }
  };
  const int threads = std::max(1, std::min<int>(options.threads, static_cast<int>(samples.size() / 64 + 1)));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  set.cached_bytes = cached_bytes;
  if (!failures.empty()) {
    std::sort(failures.begin(), failures.end());
    if (!options.skip_bad) {
      std::vector<std::string> named(failures.begin(),
                                     failures.begin() + std::min<size_t>(failures.size(), kNamedFailures));
      return absl::FailedPreconditionError(absl::StrCat(
          failures.size(), " of ", samples.size(), " images could not be decoded: ",
          absl::StrJoin(named, ", "), failures.size() > named.size() ? ", ..." : ""));
    }
    ImageSet kept;
    kept.max_short_side = set.max_short_side;
    kept.cached_bytes = set.cached_bytes;
    for (size_t i = 0; i < set.images.size(); ++i) {
      if (failed[i]) continue;
      kept.images.push_back(std::move(set.images[i]));
      kept.labels.push_back(set.labels[i]);
      kept.paths.push_back(std::move(set.paths[i]));
    }
    kept.skipped = std::move(failures);
    set = std::move(kept);
  }
  for (const cv::Mat& img : set.images) set.uncached += img.empty() ? 1 : 0;
  return set;
}

cv::Mat ImageSet::Get(size_t i) const {
  if (!images[i].empty()) return images[i];
  auto decoded = DecodeImageFile(paths[i]);
  if (!decoded.ok()) {
    throw std::runtime_error(absl::StrCat("image changed since the job started: ", decoded.status().message()));
  }
  return ShrinkToShortSide(*decoded, max_short_side);
}

void TransformInto(const cv::Mat& image, const TransformOptions& o, std::mt19937_64* rng, float* out) {
  const int size = o.image_size;
  cv::Mat crop;
  if (o.train) {
    // torchvision RandomResizedCrop.get_params, then a horizontal flip.
    const int h = image.rows, w = image.cols;
    const double area = static_cast<double>(h) * w;
    std::uniform_real_distribution<double> scale(o.min_scale, o.max_scale);
    std::uniform_real_distribution<double> log_ratio(std::log(3.0 / 4.0), std::log(4.0 / 3.0));
    cv::Rect rect(0, 0, w, h);
    bool found = false;
    for (int attempt = 0; attempt < 10 && !found; ++attempt) {
      const double target = area * scale(*rng);
      const double ratio = std::exp(log_ratio(*rng));
      const int cw = static_cast<int>(std::lround(std::sqrt(target * ratio)));
      const int ch = static_cast<int>(std::lround(std::sqrt(target / ratio)));
      if (cw > 0 && ch > 0 && cw <= w && ch <= h) {
        const int y = std::uniform_int_distribution<int>(0, h - ch)(*rng);
        const int x = std::uniform_int_distribution<int>(0, w - cw)(*rng);
        rect = cv::Rect(x, y, cw, ch);
        found = true;
      }
    }
    if (!found) {
      // Fallback to a centre crop with the ratio clamped to [3/4, 4/3].
      const double in_ratio = static_cast<double>(w) / h;
      int cw = w, ch = h;
      if (in_ratio < 3.0 / 4.0) {
        ch = static_cast<int>(std::lround(w / (3.0 / 4.0)));
      } else if (in_ratio > 4.0 / 3.0) {
        cw = static_cast<int>(std::lround(h * (4.0 / 3.0)));
      }
      rect = cv::Rect((w - cw) / 2, (h - ch) / 2, cw, ch);
    }
    cv::resize(image(rect), crop, cv::Size(size, size), 0, 0,
               (rect.width > size) ? cv::INTER_AREA : cv::INTER_LINEAR);
    if (std::uniform_int_distribution<int>(0, 1)(*rng) == 1) cv::flip(crop, crop, 1);
    if (o.rotation_degrees > 0) crop = RandomRotate(crop, o.rotation_degrees, rng);
    if (o.color_jitter > 0) crop = ColorJitter(crop, o.color_jitter, rng);
  } else {
    cv::Mat resized = ResizeShortSide(image, EvalResizeSize(size));
    // torchvision CenterCrop: top = int(round((h - size) / 2)).
    const int top = static_cast<int>(std::lround((resized.rows - size) / 2.0));
    const int left = static_cast<int>(std::lround((resized.cols - size) / 2.0));
    if (top >= 0 && left >= 0) {
      crop = resized(cv::Rect(left, top, size, size));
    } else {
      cv::resize(resized, crop, cv::Size(size, size), 0, 0, cv::INTER_LINEAR);
    }
  }
  const int plane = size * size;
  const int channels = crop.channels();
  float scale[3], shift[3];
  for (int c = 0; c < 3; ++c) {
    scale[c] = 1.0f / (255.0f * o.std[c]);
    shift[c] = -o.mean[c] / o.std[c];
  }
  for (int y = 0; y < size; ++y) {
    const uint8_t* row = crop.ptr<uint8_t>(y);
    for (int x = 0; x < size; ++x) {
      const int p = y * size + x;
      for (int c = 0; c < 3; ++c) {
        const uint8_t v = channels == 1 ? row[x] : row[x * 3 + c];
        out[c * plane + p] = v * scale[c] + shift[c];
      }
    }
  }
}

}  // namespace ft::worker
