// metadata.json, the description that travels with an exported model: its
// classes in logit order, its input (size, mean, std), where it came from,
// and how it trained.
#ifndef FT_WORKER_EXPORT_METADATA_H_
#define FT_WORKER_EXPORT_METADATA_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "finetune/v1/finetune.pb.h"

namespace ft::worker {

namespace pb = ::finetune::v1;

struct ModelMetadata {
  std::string job_id;
  pb::JobSpec spec;
  std::vector<std::string> classes;  // in logit order
  int resize_size = 0;               // the eval transform's shorter side
  std::array<float, 3> mean = {};
  std::array<float, 3> std = {};
  int64_t feature_dim = 0;
  std::vector<std::string> stages;
  std::string val_source;
  std::string test_source;  // empty without a test split
  int64_t train_images = 0;
  int64_t val_images = 0;
  int64_t test_images = 0;  // 0 without a test split
  int best_epoch = 0;       // the exported epoch
  pb::JobMetrics metrics;
  std::vector<pb::EpochSummary> history;
};

// The metadata.json text (format finetuned.classifier.v1, indented by 2):
// the fields above, with the spec, the metrics and each epoch's summary in
// the protobuf JSON mapping.
std::string MetadataJson(const ModelMetadata& metadata);

}  // namespace ft::worker

#endif  // FT_WORKER_EXPORT_METADATA_H_
