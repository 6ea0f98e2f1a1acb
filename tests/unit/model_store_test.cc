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
  auto store = FilesystemModelStore::Create({root.string(), nullptr, 1000, ""});
  ASSERT_TRUE(store.ok()) << store.status();
  const std::string data = "pretend torchscript bytes";
  const std::string meta = R"({"backbone":"resnet18","classes":["a","b"],"image_size":32})";

  auto bad = (*store)->BeginUpload();
  ASSERT_TRUE((*bad)->StartFile("model.pt", data.size(), std::string(64, '0')).ok());
  ASSERT_TRUE((*bad)->Append(data).ok());
  auto r = (*store)->Commit(*std::move(bad), "job-1", "", meta, "");
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
  EXPECT_TRUE((*store)->List("")->empty());

  auto big = (*store)->BeginUpload();
  ASSERT_TRUE((*big)->StartFile("model.pt", 2000, std::string(64, '0')).ok());
  EXPECT_TRUE(absl::IsResourceExhausted((*big)->Append(std::string(2000, 'x'))));

  auto up = (*store)->BeginUpload();
  ASSERT_TRUE((*up)->StartFile("model.pt", data.size(), util::Sha256Hex(data)).ok());
  ASSERT_TRUE((*up)->Append(data).ok());
  auto model = (*store)->Commit(*std::move(up), "job-1", "n", meta, "");
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

// Two replicas on one shared root: a replica starting does not delete the
// other's upload in progress, each sees what the other published, and a
// model deleted by one is gone for both.
TEST(ModelStoreTest, ReplicasShareOneRoot) {
  const fs::path root = fs::temp_directory_path() / ("ft-models-replicas-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto a = FilesystemModelStore::Create({root.string(), nullptr, 1000, "a"});
  ASSERT_TRUE(a.ok()) << a.status();
  const std::string data = "pretend torchscript bytes";
  auto up = (*a)->BeginUpload();
  ASSERT_TRUE(up.ok()) << up.status();
  ASSERT_TRUE((*up)->StartFile("model.pt", data.size(), util::Sha256Hex(data)).ok());
  ASSERT_TRUE((*up)->Append(data).ok());
  auto b = FilesystemModelStore::Create({root.string(), nullptr, 1000, "b"});
  ASSERT_TRUE(b.ok()) << b.status();
  auto model = (*a)->Commit(*std::move(up), "job-1", "n", R"({"backbone":"resnet18"})", "");
  ASSERT_TRUE(model.ok()) << model.status();
  auto listed = (*b)->List("");
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ(listed->front().id(), model->id());
  EXPECT_TRUE(fs::is_regular_file(*(*b)->FilePath(model->id(), "model.pt")));
  ASSERT_TRUE((*b)->Delete(model->id()).ok());
  EXPECT_TRUE(absl::IsNotFound((*a)->Get(model->id()).status()));
  EXPECT_TRUE(absl::IsNotFound((*a)->Delete(model->id())));
  fs::remove_all(root);
}

TEST(ModelStoreTest, ModelsCarryTheirTenant) {
  const fs::path root = fs::temp_directory_path() / ("ft-models-tenants-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto store = FilesystemModelStore::Create({root.string(), nullptr, 1000, ""});
  ASSERT_TRUE(store.ok()) << store.status();
  const std::string meta = R"({"backbone":"resnet18","classes":["a","b"],"image_size":32})";
  auto commit = [&](const std::string& data, const std::string& tenant) {
    auto up = (*store)->BeginUpload();
    EXPECT_TRUE((*up)->StartFile("model.pt", data.size(), util::Sha256Hex(data)).ok());
    EXPECT_TRUE((*up)->Append(data).ok());
    auto m = (*store)->Commit(*std::move(up), "job-1", "n", meta, tenant);
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
  // Every file counts: model.pt and the metadata.json the store wrote.
  EXPECT_EQ((*store)->TenantBytes("audio"),
            17 + static_cast<int64_t>(fs::file_size(root / a.id() / "metadata.json")));
  EXPECT_EQ((*store)->TenantBytes("nobody"), 0);

  // A record written before tenants has no "tenant": it is the default one's.
  const fs::path record = root / a.id() / "model.json";
  const std::string json = R"({"id":")" + a.id() + R"(","job_id":"job-1","backbone":"resnet18","size_bytes":"17"})";
  std::ofstream(record, std::ios::trunc) << json;
  EXPECT_EQ((*store)->Get(a.id())->tenant(), "default");
  EXPECT_EQ((*store)->List("default")->size(), 2u);
  fs::remove_all(root);
}

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Sends `data` as file `name` of `upload`, in two chunks.
absl::Status Send(ModelUpload& upload, const std::string& name, const std::string& data) {
  if (absl::Status s = upload.StartFile(name, data.size(), util::Sha256Hex(data)); !s.ok()) return s;
  if (absl::Status s = upload.Append(data.substr(0, data.size() / 2)); !s.ok()) return s;
  return upload.Append(data.substr(data.size() / 2));
}

TEST(ModelStoreTest, StoresEveryFileOfAModel) {
  const fs::path root = fs::temp_directory_path() / ("ft-models-files-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto store = FilesystemModelStore::Create({root.string(), nullptr, 10000, ""});
  ASSERT_TRUE(store.ok()) << store.status();
  const std::string meta = R"({"backbone":"resnet18","classes":["a","b"],"image_size":32})";
  const std::string pt = "torchscript bytes", card = "# a model card\n", onnx = "onnx protobuf bytes";

  auto up = (*store)->BeginUpload();
  ASSERT_TRUE(Send(**up, "model.pt", pt).ok());
  ASSERT_TRUE(Send(**up, "README.md", card).ok());
  ASSERT_TRUE(Send(**up, "model.onnx", onnx).ok());
  auto model = (*store)->Commit(*std::move(up), "job-1", "n", meta, "vision");
  ASSERT_TRUE(model.ok()) << model.status();
  // The record lists every file in download order, with its size and digest.
  std::vector<std::string> names;
  for (const auto& f : model->files()) names.push_back(f.name());
  EXPECT_EQ(names, (std::vector<std::string>{"metadata.json", "model.pt", "README.md", "model.onnx"}));
  int64_t total = 0;
  for (const auto& f : model->files()) {
    auto path = (*store)->FilePath(model->id(), f.name());
    ASSERT_TRUE(path.ok()) << path.status();
    const std::string bytes = ReadAll(*path);
    EXPECT_EQ(static_cast<int64_t>(bytes.size()), f.size_bytes()) << f.name();
    EXPECT_EQ(util::Sha256Hex(bytes), f.sha256()) << f.name();
    total += f.size_bytes();
  }
  EXPECT_EQ(ReadAll(root / model->id() / "model.onnx"), onnx);
  EXPECT_EQ(ReadAll(root / model->id() / "README.md"), card);
  EXPECT_NE(ReadAll(root / model->id() / "metadata.json").find(model->id()), std::string::npos);
  EXPECT_EQ(model->sha256(), util::Sha256Hex(pt));
  // The quota counts all of them.
  EXPECT_EQ(model->size_bytes(), total);
  EXPECT_EQ((*store)->TenantBytes("vision"), total);
  EXPECT_EQ((*store)->Get(model->id())->files_size(), 4);
  // No part file is left behind.
  for (const auto& entry : fs::directory_iterator(root / model->id())) {
    EXPECT_NE(entry.path().extension(), ".part") << entry.path();
  }
  EXPECT_TRUE(absl::IsInvalidArgument((*store)->FilePath(model->id(), "model.json").status()));
  EXPECT_TRUE(absl::IsInvalidArgument((*store)->FilePath(model->id(), "../x").status()));

  // Only the known names, each once; model.pt is required; each file is checked.
  auto names_check = (*store)->BeginUpload();
  EXPECT_TRUE(absl::IsInvalidArgument((*names_check)->StartFile("evil.sh", 1, "")));
  EXPECT_TRUE(absl::IsInvalidArgument((*names_check)->StartFile("../model.pt", 1, "")));
  EXPECT_TRUE(absl::IsInvalidArgument((*names_check)->StartFile("metadata.json", 1, "")));
  EXPECT_TRUE(absl::IsInvalidArgument((*names_check)->Append("x")));
  ASSERT_TRUE(Send(**names_check, "README.md", card).ok());
  EXPECT_TRUE(absl::IsInvalidArgument((*names_check)->StartFile("README.md", 1, "")));
  auto no_pt = (*store)->Commit(*std::move(names_check), "job-2", "n", meta, "");
  EXPECT_TRUE(absl::IsInvalidArgument(no_pt.status())) << no_pt.status();
  EXPECT_NE(std::string(no_pt.status().message()).find("model.pt"), std::string::npos);

  auto torn = (*store)->BeginUpload();
  ASSERT_TRUE(Send(**torn, "model.pt", pt).ok());
  ASSERT_TRUE((*torn)->StartFile("model.onnx", onnx.size(), util::Sha256Hex(onnx)).ok());
  ASSERT_TRUE((*torn)->Append(onnx.substr(1)).ok());
  auto short_onnx = (*store)->Commit(*std::move(torn), "job-3", "n", meta, "");
  EXPECT_TRUE(absl::IsDataLoss(short_onnx.status())) << short_onnx.status();
  EXPECT_NE(std::string(short_onnx.status().message()).find("model.onnx"), std::string::npos);
  auto corrupt = (*store)->BeginUpload();
  ASSERT_TRUE((*corrupt)->StartFile("model.pt", pt.size(), util::Sha256Hex(pt)).ok());
  ASSERT_TRUE((*corrupt)->Append(std::string(pt.size(), 'x')).ok());
  // The next file's start checks the one before.
  EXPECT_TRUE(absl::IsDataLoss((*corrupt)->StartFile("README.md", card.size(), util::Sha256Hex(card))));
  EXPECT_EQ((*store)->List("")->size(), 1u);

  // All files together are held to the limit.
  auto big = (*store)->BeginUpload();
  ASSERT_TRUE(Send(**big, "model.pt", std::string(6000, 'p')).ok());
  ASSERT_TRUE((*big)->StartFile("model.onnx", 6000, std::string(64, '0')).ok());
  EXPECT_TRUE(absl::IsResourceExhausted((*big)->Append(std::string(6000, 'o'))));
  fs::remove_all(root);
}

TEST(ModelStoreTest, ModelsStoredBeforeFileListsStillList) {
  const fs::path root = fs::temp_directory_path() / ("ft-models-old-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto store = FilesystemModelStore::Create({root.string(), nullptr, 10000, ""});
  ASSERT_TRUE(store.ok()) << store.status();
  // What an older server left: model.pt, metadata.json and a record without files.
  const std::string pt = "old torchscript";
  fs::create_directories(root / "mdl-old");
  std::ofstream(root / "mdl-old" / "model.pt") << pt;
  std::ofstream(root / "mdl-old" / "metadata.json") << R"({"classes":["a"]})";
  std::ofstream(root / "mdl-old" / "model.json")
      << R"({"id":"mdl-old","job_id":"job-0","sha256":")" + util::Sha256Hex(pt) + R"(","size_bytes":"15"})";
  auto model = (*store)->Get("mdl-old");
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<pb::ModelFile> files = StoredModelFiles(*model);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].name(), "metadata.json");
  EXPECT_EQ(files[1].name(), "model.pt");
  EXPECT_EQ(files[1].sha256(), util::Sha256Hex(pt));
  EXPECT_TRUE((*store)->FilePath("mdl-old", "metadata.json").ok());
  fs::remove_all(root);
}

}  // namespace
}  // namespace ft::server
