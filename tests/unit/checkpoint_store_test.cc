#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/util/files.h"
#include "common/util/sha256.h"
#include "gtest/gtest.h"
#include "server/checkpoints/checkpoint_store.h"
#include "tests/unit/test_dirs.h"

namespace ft::server {
namespace {
namespace fs = std::filesystem;

class CheckpointStoreTest : public testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    root_ = dir_;
    auto s = CheckpointStore::Create({root_.string(), /*keep=*/2, /*max_bytes=*/1 << 20, /*replica_id=*/""});
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }
  absl::StatusOr<CheckpointInfo> Put(const std::string& job, int epoch, int64_t step, const std::string& bytes,
                                     std::string sha = "") {
    auto up = store_->BeginUpload(job, epoch, step, step == 0, static_cast<int64_t>(bytes.size()),
                                  sha.empty() ? util::Sha256Hex(bytes) : sha);
    if (!up.ok()) return up.status();
    for (size_t off = 0; off < bytes.size(); off += 7) {
      auto s = (*up)->Append(absl::string_view(bytes).substr(off, 7));
      if (!s.ok()) return s;
    }
    return store_->Commit(*std::move(up));
  }
  fs::path root_;
  std::unique_ptr<CheckpointStore> store_;
};

TEST_F(CheckpointStoreTest, KeepsTheNewestTwoAndSkipsADamagedOne) {
  ASSERT_TRUE(Put("job-1", 1, 0, "first").ok());
  ASSERT_TRUE(Put("job-1", 1, 5, "second").ok());
  auto third = Put("job-1", 2, 0, "third");
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(third->number, 3);
  auto all = store_->List("job-1");
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].step, 5);
  EXPECT_EQ(all[1].epoch, 2);
  EXPECT_FALSE(fs::exists(root_ / "job-1" / "1.ckpt"));
  auto newest = store_->Newest("job-1");
  ASSERT_TRUE(newest.ok());
  EXPECT_EQ(newest->number, 3);
  EXPECT_EQ(*util::ReadFile(newest->path), "third");
  // Damage the newest: the one before is used, and the skip is reported.
  std::ofstream(third->path, std::ios::binary | std::ios::trunc) << "thirX";
  std::vector<std::string> skipped;
  newest = store_->Newest("job-1", [&](const CheckpointInfo& c, const std::string& why) {
    skipped.push_back(std::to_string(c.number) + ": " + why);
  });
  ASSERT_TRUE(newest.ok());
  EXPECT_EQ(newest->number, 2);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_NE(skipped[0].find("3: its sha256 is"), std::string::npos) << skipped[0];
  // Both damaged: none.
  fs::remove(newest->path);
  EXPECT_TRUE(absl::IsNotFound(store_->Newest("job-1").status()));
  store_->DeleteJob("job-1");
  EXPECT_FALSE(fs::exists(root_ / "job-1"));
  EXPECT_TRUE(absl::IsNotFound(store_->Newest("job-1").status()));
}

TEST_F(CheckpointStoreTest, RefusesWhatDidNotArriveWhole) {
  EXPECT_TRUE(absl::IsDataLoss(Put("job-2", 1, 0, "bytes", std::string(64, 'a')).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(Put("../x", 1, 0, "bytes").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(Put("job-2", 0, 0, "bytes").status()));
  EXPECT_TRUE(absl::IsResourceExhausted(Put("job-2", 1, 0, std::string(2 << 20, 'x')).status()));
  auto up = store_->BeginUpload("job-2", 1, 0, false, 3, util::Sha256Hex("abc"));
  ASSERT_TRUE(up.ok());
  EXPECT_TRUE(absl::IsResourceExhausted((*up)->Append("abcd")));
  up->reset();  // the stream went away
  EXPECT_TRUE(store_->List("job-2").empty());
  // Nothing half-written is left where a resume would look.
  for (const auto& f : fs::directory_iterator(root_ / "job-2")) ADD_FAILURE() << f.path();
}

}  // namespace
}  // namespace ft::server
