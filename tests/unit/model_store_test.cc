#include <filesystem>
#include <fstream>
#include <iterator>

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
  auto r = (*store)->Commit(*std::move(bad), data.size(), std::string(64, '0'), "job-1", "", meta, "");
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
  EXPECT_TRUE((*store)->List("")->empty());

  auto big = (*store)->BeginUpload();
  EXPECT_TRUE(absl::IsResourceExhausted((*big)->Append(std::string(2000, 'x'))));

  auto up = (*store)->BeginUpload();
  ASSERT_TRUE((*up)->Append(data).ok());
  auto model = (*store)->Commit(*std::move(up), data.size(), util::Sha256Hex(data), "job-1", "n", meta, "");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->backbone(), "resnet18");
  EXPECT_EQ(model->classes_size(), 2);
  ASSERT_EQ((*store)->List("")->size(), 1u);
  EXPECT_EQ((*store)->Get(model->id())->sha256(), util::Sha256Hex(data));
  EXPECT_TRUE(absl::IsInvalidArgument((*store)->Get("../etc").status()));
  EXPECT_TRUE(absl::IsNotFound((*store)->Get("mdl-nope").status()));
  ASSERT_TRUE((*store)->Delete(model->id()).ok());
  EXPECT_TRUE((*store)->List("")->empty());
  fs::remove_all(root);
}

TEST(ModelStoreTest, ModelsCarryTheirTenant) {
  const fs::path root = fs::temp_directory_path() / ("ft-models-tenants-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto store = FilesystemModelStore::Create({root.string(), nullptr, 1000});
  ASSERT_TRUE(store.ok()) << store.status();
  const std::string meta = R"({"backbone":"resnet18","classes":["a","b"],"image_size":32})";
  auto commit = [&](const std::string& data, const std::string& tenant) {
    auto up = (*store)->BeginUpload();
    EXPECT_TRUE((*up)->Append(data).ok());
    auto m = (*store)->Commit(*std::move(up), data.size(), util::Sha256Hex(data), "job-1", "n", meta, tenant);
    EXPECT_TRUE(m.ok()) << m.status();
    return *m;
  };
  const pb::Model v = commit("vision bytes", "vision");
  const pb::Model a = commit("audio model bytes", "audio");
  const pb::Model d = commit("default", "");
  EXPECT_EQ((*store)->Get(v.id())->tenant(), "vision");
  EXPECT_EQ(d.tenant(), "default");
  ASSERT_EQ((*store)->List("vision")->size(), 1u);
  EXPECT_EQ((*store)->List("vision")->at(0).id(), v.id());
  EXPECT_EQ((*store)->List("")->size(), 3u);
  EXPECT_EQ((*store)->TenantBytes("audio"), 17);
  EXPECT_EQ((*store)->TenantBytes("nobody"), 0);

  // A record written before tenants has no "tenant": it is the default one's.
  const fs::path record = root / a.id() / "model.json";
  const std::string json = R"({"id":")" + a.id() + R"(","job_id":"job-1","backbone":"resnet18","size_bytes":"17"})";
  std::ofstream(record, std::ios::trunc) << json;
  EXPECT_EQ((*store)->Get(a.id())->tenant(), "default");
  EXPECT_EQ((*store)->List("default")->size(), 2u);
  fs::remove_all(root);
}

}  // namespace
}  // namespace ft::server
