#include "worker/export/metadata.h"

#include <nlohmann/json.hpp>

#include "common/util/proto_json.h"

namespace ft::worker {

std::string MetadataJson(const ModelMetadata& m) {
  auto proto = [](const google::protobuf::Message& message) { return nlohmann::json::parse(util::ToJson(message)); };
  nlohmann::json history = nlohmann::json::array();
  for (pb::EpochSummary summary : m.history) {
    // Per epoch only: the per-step curves (up to 2000 numbers an epoch)
    // stay in the job's events, where `ftctl report` draws them.
    summary.clear_step_losses();
    summary.clear_step_learning_rates();
    summary.clear_steps_per_point();
    history.push_back(proto(summary));
  }
  // nlohmann::json keeps keys sorted, so the grouping below is for readers.
  nlohmann::json meta = {{"format", "finetuned.classifier.v1"}, {"job_id", m.job_id}, {"backbone", m.spec.backbone()},
                         {"classes", m.classes}, {"num_classes", m.classes.size()}};
  // What the model takes.
  meta.update({{"image_size", m.spec.image_size()}, {"resize_size", m.resize_size},
               {"mean", std::vector<float>(m.mean.begin(), m.mean.end())},
               {"std", std::vector<float>(m.std.begin(), m.std.end())},
               {"input", "float32 [N,3,H,W], RGB scaled to [0,1], normalised with mean/std"},
               {"eval_transform", "resize shorter side to resize_size, centre crop image_size"},
               {"feature_dim", m.feature_dim}, {"freeze_depth", m.spec.freeze_depth()}, {"stages", m.stages}});
  // Where it came from and how it trained.
  meta.update({{"dataset_uri", m.spec.dataset_uri()}, {"weights_uri", m.spec.weights_uri()},
               {"val_source", m.val_source}, {"augment", m.spec.augment()}, {"train_images", m.train_images},
               {"val_images", m.val_images}, {"best_epoch", m.best_epoch}, {"spec", proto(m.spec)},
               {"metrics", proto(m.metrics)}, {"history", history}});
  if (!m.test_source.empty()) meta["test_source"] = m.test_source;
  if (m.test_images > 0) meta["test_images"] = m.test_images;
  nlohmann::json dataset = {{"uri", m.spec.dataset_uri()}, {"format", m.dataset_format},
                            {"listing_sha256", m.dataset_listing_sha256}, {"train_images", m.train_images},
                            {"val_images", m.val_images}, {"test_images", m.test_images}};
  if (!m.dataset_sha256.empty()) dataset["sha256"] = m.dataset_sha256;
  meta["dataset"] = dataset;
  meta["weights"] = {{"uri", m.spec.weights_uri()}, {"file", m.weights_file}, {"sha256", m.weights_sha256}};
  meta["seed"] = m.spec.seed();
  meta["software"] = {{"finetuned", m.software.finetuned}, {"libtorch", m.software.libtorch},
                      {"opencv", m.software.opencv}, {"blas", m.software.blas}};
  if (m.onnx.has_value()) {
    if (m.onnx->error.empty()) {
      meta["onnx"] = {{"file", m.onnx->file}, {"opset", m.onnx->opset}, {"converter", m.onnx->converter},
                      {"verified_with", m.onnx->verified_with}};
    } else {
      meta["onnx"] = {{"error", m.onnx->error}};
    }
  }
  return meta.dump(2);
}

}  // namespace ft::worker
