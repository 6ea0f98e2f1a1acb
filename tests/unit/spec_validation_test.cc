#include <functional>
#include <string>
#include <vector>

#include "common/spec/spec_options.h"
#include "gtest/gtest.h"
#include "server/jobs/spec_validation.h"

namespace ft::server {
namespace {

// One row: a change to a valid spec, and the code and field it must give.
struct Case {
  std::string name;
  std::function<void(pb::JobSpec*)> change;
  absl::StatusCode code;
  std::string field;  // the message starts with "<field>: "
};

pb::JobSpec Valid() {
  pb::JobSpec s;
  s.set_backbone("resnet18");
  s.set_dataset_uri("file:///data/x");
  return s;
}

TEST(SpecValidationTest, EveryFieldAndCombination) {
  const auto kOk = absl::StatusCode::kOk;
  const auto kBad = absl::StatusCode::kInvalidArgument;
  const std::vector<Case> cases = {
      {"defaults", [](pb::JobSpec*) {}, kOk, ""},
      {"no backbone", [](pb::JobSpec* s) { s->clear_backbone(); }, kBad, "backbone"},
      {"unknown backbone", [](pb::JobSpec* s) { s->set_backbone("resnet9"); }, kBad, "backbone"},
      {"epochs negative", [](pb::JobSpec* s) { s->set_epochs(-3); }, kBad, "epochs"},
      {"epochs huge", [](pb::JobSpec* s) { s->set_epochs(10001); }, kBad, "epochs"},
      {"batch negative", [](pb::JobSpec* s) { s->set_batch_size(-1); }, kBad, "batch_size"},
      {"batch huge", [](pb::JobSpec* s) { s->set_batch_size(5000); }, kBad, "batch_size"},
      {"image tiny", [](pb::JobSpec* s) { s->set_image_size(8); }, kBad, "image_size"},
      {"image huge", [](pb::JobSpec* s) { s->set_image_size(2048); }, kBad, "image_size"},
      {"lr negative", [](pb::JobSpec* s) { s->set_learning_rate(-1); }, kBad, "learning_rate"},
      {"lr 11", [](pb::JobSpec* s) { s->set_learning_rate(11); }, kBad, "learning_rate"},
      {"lr nan", [](pb::JobSpec* s) { s->set_learning_rate(NAN); }, kBad, "learning_rate"},
      {"optimizer", [](pb::JobSpec* s) { s->set_optimizer("lion"); }, kBad, "optimizer"},
      {"freeze too deep", [](pb::JobSpec* s) { s->set_freeze_depth(6); }, kBad, "freeze_depth"},
      {"freeze -2", [](pb::JobSpec* s) { s->set_freeze_depth(-2); }, kBad, "freeze_depth"},
      {"freeze all", [](pb::JobSpec* s) { s->set_freeze_depth(-1); }, kOk, ""},
      {"val split 1", [](pb::JobSpec* s) { s->set_val_split(1); }, kBad, "val_split"},
      {"augment", [](pb::JobSpec* s) { s->set_augment("heavy"); }, kBad, "augment"},
      {"seed", [](pb::JobSpec* s) { s->set_seed(-1); }, kBad, "seed"},
      {"jitter 2", [](pb::JobSpec* s) { s->set_color_jitter(2); }, kBad, "color_jitter"},
      {"rotation 200", [](pb::JobSpec* s) { s->set_rotation_degrees(200); }, kBad, "rotation_degrees"},
      {"jitter without augment",
       [](pb::JobSpec* s) {
         s->set_augment("none");
         s->set_color_jitter(0.2f);
       },
       kBad, "color_jitter"},
      {"mean without std", [](pb::JobSpec* s) { s->add_mean(0.5f); }, kBad, "mean"},
      {"std zero",
       [](pb::JobSpec* s) {
         for (int i = 0; i < 3; ++i) s->add_mean(0.5f), s->add_std(0);
       },
       kBad, "std"},
      {"weight decay", [](pb::JobSpec* s) { s->set_weight_decay(2); }, kBad, "weight_decay"},
      {"label smoothing", [](pb::JobSpec* s) { s->set_label_smoothing(1); }, kBad, "label_smoothing"},
      {"class weights", [](pb::JobSpec* s) { s->set_class_weights("inverse"); }, kBad, "class_weights"},
      {"grad clip", [](pb::JobSpec* s) { s->set_grad_clip_norm(-1); }, kBad, "grad_clip_norm"},
      {"schedule", [](pb::JobSpec* s) { s->set_lr_schedule("linear"); }, kBad, "lr_schedule"},
      {"warmup past epochs", [](pb::JobSpec* s) { s->set_warmup_epochs(5); }, kBad, "warmup_epochs"},
      {"lr step negative", [](pb::JobSpec* s) { s->set_lr_step_epochs(-1); }, kBad, "lr_step_epochs"},
      {"gamma 2", [](pb::JobSpec* s) { s->set_lr_gamma(2); }, kBad, "lr_gamma"},
      {"momentum 1", [](pb::JobSpec* s) { s->set_momentum(1); }, kBad, "momentum"},
      {"nesterov with adam", [](pb::JobSpec* s) { s->set_nesterov(true); }, kBad, "nesterov"},
      {"nesterov with sgd",
       [](pb::JobSpec* s) {
         s->set_nesterov(true);
         s->set_optimizer("sgd");
       },
       kOk, ""},
      {"unfreeze past epochs", [](pb::JobSpec* s) { s->set_unfreeze_at(4); }, kBad, "unfreeze_at"},
      {"finetune depth",
       [](pb::JobSpec* s) {
         s->set_unfreeze_at(2);
         s->set_finetune_freeze_depth(9);
       },
       kBad, "finetune_freeze_depth"},
      {"finetune lr mult",
       [](pb::JobSpec* s) {
         s->set_unfreeze_at(2);
         s->set_finetune_lr_mult(1000);
       },
       kBad, "finetune_lr_mult"},
      {"early stopping", [](pb::JobSpec* s) { s->set_early_stopping_patience(-1); }, kBad, "early_stopping_patience"},
      {"cache features", [](pb::JobSpec* s) { s->set_cache_features("maybe"); }, kBad, "cache_features"},
      {"cache on needs frozen", [](pb::JobSpec* s) { s->set_cache_features("on"); }, kBad, "cache_features"},
      {"cache on, frozen, no augment",
       [](pb::JobSpec* s) {
         s->set_cache_features("on");
         s->set_freeze_depth(-1);
         s->set_augment("none");
       },
       kOk, ""},
      {"cache on, first stages frozen, no augment",
       [](pb::JobSpec* s) {
         s->set_cache_features("on");
         s->set_freeze_depth(2);
         s->set_augment("none");
       },
       kOk, ""},
      {"cache dtype", [](pb::JobSpec* s) { s->set_cache_dtype("bfloat16"); }, kBad, "cache_dtype"},
      {"export", [](pb::JobSpec* s) { s->set_export_weights("first"); }, kBad, "export_weights"},
      {"on bad image", [](pb::JobSpec* s) { s->set_on_bad_image("ignore"); }, kBad, "on_bad_image"},
      {"checkpoint interval negative", [](pb::JobSpec* s) { s->set_checkpoint_interval_seconds(-1); }, kBad,
       "checkpoint_interval_seconds"},
      {"checkpoint at epoch ends only", [](pb::JobSpec* s) { s->set_checkpoint_interval_seconds(0); }, kOk, ""},
      {"name too long", [](pb::JobSpec* s) { s->set_name(std::string(257, 'x')); }, kBad, "name"},
      {"torchscript any depth",
       [](pb::JobSpec* s) {
         s->set_backbone("torchscript");
         s->set_freeze_depth(40);
       },
       kOk, ""},
  };
  for (const Case& c : cases) {
    pb::JobSpec spec = Valid();
    c.change(&spec);
    const catalog::BackboneInfo* backbone = nullptr;
    const absl::Status s = ValidateSpec(&spec, &backbone);
    EXPECT_EQ(s.code(), c.code) << c.name << ": " << s;
    if (c.code != absl::StatusCode::kOk) {
      EXPECT_EQ(s.message().substr(0, c.field.size() + 2), c.field + ": ") << c.name << ": " << s;
    } else {
      EXPECT_NE(backbone, nullptr) << c.name;
    }
  }
}

TEST(SpecValidationTest, DefaultsAreWrittenBack) {
  pb::JobSpec spec = Valid();
  spec.set_optimizer("sgd");
  const catalog::BackboneInfo* backbone = nullptr;
  ASSERT_TRUE(ValidateSpec(&spec, &backbone).ok());
  EXPECT_EQ(spec.epochs(), 3);
  EXPECT_EQ(spec.batch_size(), 32);
  EXPECT_EQ(spec.image_size(), 224);
  EXPECT_FLOAT_EQ(spec.learning_rate(), 1e-3f);
  EXPECT_FLOAT_EQ(spec.momentum(), 0.9f);
  EXPECT_EQ(spec.augment(), "standard");
  EXPECT_EQ(spec.lr_schedule(), "constant");
  EXPECT_EQ(spec.class_weights(), "none");
  EXPECT_EQ(spec.cache_features(), "auto");
  EXPECT_EQ(spec.cache_dtype(), "float32");
  EXPECT_EQ(spec.export_weights(), "best");
  EXPECT_EQ(spec.on_bad_image(), "fail");
  EXPECT_EQ(spec.weights_uri(), "none");
  EXPECT_EQ(spec.checkpoint_interval_seconds(), 300);
  // What is stored parses back to the same options.
  auto parsed = spec::ParseSpecOptions(spec);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->optimizer, spec::Optimizer::kSgd);
  EXPECT_EQ(spec::Name(parsed->augment), "standard");
}

TEST(SpecOptionsTest, UnknownNamesListTheKnownOnes) {
  pb::JobSpec spec;
  spec.set_lr_schedule("linear");
  auto s = spec::ParseSpecOptions(spec);
  EXPECT_TRUE(absl::IsInvalidArgument(s.status()));
  EXPECT_EQ(s.status().message(), "lr_schedule: unknown schedule 'linear'; known: constant, step, cosine");
}

}  // namespace
}  // namespace ft::server
