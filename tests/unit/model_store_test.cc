#include <filesystem>

#include "gtest/gtest.h"
#include "common/util/sha256.h"
#include "server/models/model_store.h"

namespace ft::server {
namespace {
namespace fs = std::filesystem;

TEST(ModelStoreTest, CommitVerifiesAndPublishes) {
  const fs::path root = fs::temp_directory_path() / ("ft-models-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto store = FilesystemModelStore::Create({root.string(), nullptr, 1000});
  ASSERT_TRUE(store.ok()) << store.status();
  const std::string data = "pretend torchscript bytes";
  const std::string meta = R"({"backbone":"resnet18","classes":["a","b"],"image_size":32})";

  auto bad = (*store)->BeginUpload();
  ASSERT_TRUE((*bad)->Append(data).ok());
  auto r = (*store)->Commit(*std::move(bad), data.size(), std::string(64, '0'), "job-1", "", meta);
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
  EXPECT_TRUE((*store)->List()->empty());

  auto big = (*store)->BeginUpload();
  EXPECT_TRUE(absl::IsResourceExhausted((*big)->Append(std::string(2000, 'x'))));

  auto up = (*store)->BeginUpload();
  ASSERT_TRUE((*up)->Append(data).ok());
  auto model = (*store)->Commit(*std::move(up), data.size(), util::Sha256Hex(data), "job-1", "n", meta);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->backbone(), "resnet18");
  EXPECT_EQ(model->classes_size(), 2);
  ASSERT_EQ((*store)->List()->size(), 1u);
  EXPECT_EQ((*store)->Get(model->id())->sha256(), util::Sha256Hex(data));
  EXPECT_TRUE(absl::IsInvalidArgument((*store)->Get("../etc").status()));
  EXPECT_TRUE(absl::IsNotFound((*store)->Get("mdl-nope").status()));
  ASSERT_TRUE((*store)->Delete(model->id()).ok());
  EXPECT_TRUE((*store)->List()->empty());
  fs::remove_all(root);
}

}  // namespace
}  // namespace ft::server
