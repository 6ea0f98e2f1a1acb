#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "common/datasets/layout.h"
#include "common/datasets/sandbox.h"
#include "server/datasets/resolver.h"
#include "tests/unit/test_dirs.h"

namespace ft::datasets {
namespace {
namespace fs = std::filesystem;

class DatasetsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("ft-ds-" + std::to_string(::getpid()) + "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  void Touch(const fs::path& p) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << "x";
  }
  fs::path root_;
};

TEST_F(DatasetsTest, ImageFolderWithSplits) {
  for (int i = 0; i < 3; ++i) {
    Touch(root_ / "train/cat" / (std::to_string(i) + ".jpg"));
    Touch(root_ / "train/dog" / (std::to_string(i) + ".PNG"));
  }
  Touch(root_ / "train/dog/notes.txt");
  Touch(root_ / "val/cat/a.jpg");
  Touch(root_ / "val/dog/a.jpg");
  Touch(root_ / "test/dog/a.jpg");
  auto l = ScanDataset(root_.string(), {});
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->format, "imagefolder");
  EXPECT_EQ(l->classes, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(l->train.size(), 6u);
  EXPECT_EQ(l->val.size(), 2u);
  EXPECT_EQ(l->test.size(), 1u);
  EXPECT_EQ(l->test[0].label, 1);
}

TEST_F(DatasetsTest, ValSplitMakesTheDatasetsValTheTestSplit) {
  testing::WriteTinyImageFolder(root_ / "train", {"cat", "dog"}, 10);
  testing::WriteTinyImageFolder(root_ / "val", {"cat"}, 1);
  testing::WriteTinyImageFolder(root_ / "val", {"dog"}, 2);
  auto u = ParseDatasetUri("file:///x?val=split&max_val_per_class=1", "dataset_uri");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_TRUE(u->options.val_from_split);
  EXPECT_FALSE(ParseDatasetUri("file:///x?val=dataset", "dataset_uri")->options.val_from_split);
  auto bad = ParseDatasetUri("file:///x?val=maybe", "dataset_uri");
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status()));
  EXPECT_NE(bad.status().message().find("'dataset' or 'split'"), std::string::npos);
  LayoutOptions o = u->options;
  o.val_split = 0.2f;
  auto l = ScanDataset(root_.string(), o);
  ASSERT_TRUE(l.ok()) << l.status();
  // val: 2 of each class's 10 train images, capped at 1; test: the val/ folder.
  EXPECT_EQ(l->val.size(), 2u);
  EXPECT_EQ(l->train.size(), 16u);
  EXPECT_EQ(l->test.size(), 3u);
  EXPECT_EQ(l->val_source, "20% split of train");
  EXPECT_EQ(l->test_source, "val/ folder");
  for (const auto& s : l->val) EXPECT_NE(s.path.find("/train/"), std::string::npos) << s.path;
  for (const auto& s : l->test) EXPECT_NE(s.path.find("/val/"), std::string::npos) << s.path;
  // With a test/ folder too, the val/ images would have nowhere to go.
  Touch(root_ / "test/cat/t.jpg");
  auto both = ScanDataset(root_.string(), o);
  EXPECT_TRUE(absl::IsInvalidArgument(both.status())) << both.status();
  EXPECT_NE(both.status().message().find("val=split"), std::string::npos);
  // Without val=split, nothing changes.
  auto plain = ScanDataset(root_.string(), {});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->val.size(), 3u);
  EXPECT_EQ(plain->test.size(), 1u);
  EXPECT_EQ(plain->test_source, "test/ folder");
}

TEST_F(DatasetsTest, FlatFoldersSplitStratifiedAndSeeded) {
  for (int i = 0; i < 10; ++i) {
    Touch(root_ / "a" / (std::to_string(i) + ".png"));
    Touch(root_ / "b" / (std::to_string(i) + ".png"));
  }
  LayoutOptions o;
  o.val_split = 0.3f;
  o.seed = 42;
  auto l1 = ScanDataset(root_.string(), o);
  auto l2 = ScanDataset(root_.string(), o);
  ASSERT_TRUE(l1.ok()) << l1.status();
  EXPECT_EQ(l1->val.size(), 6u);
  int val_a = 0;
  for (const auto& s : l1->val) val_a += s.label == 0;
  EXPECT_EQ(val_a, 3);
  for (size_t i = 0; i < l1->val.size(); ++i) EXPECT_EQ(l1->val[i].path, l2->val[i].path);
  o.max_per_class = 2;
  auto capped = ScanDataset(root_.string(), o);
  EXPECT_EQ(capped->train.size(), 4u);
}

TEST_F(DatasetsTest, CsvManifest) {
  Touch(root_ / "img/1.png");
  Touch(root_ / "img/2.png");
  Touch(root_ / "img/3.png");
  Touch(root_ / "img/4.png");
  std::ofstream(root_ / "labels.csv") << "path,label\nimg/1.png,x\nimg/2.png,y\nimg/3.png,x\nimg/4.png,y\n";
  auto l = ScanDataset((root_ / "labels.csv").string(), {});
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->format, "csv");
  EXPECT_EQ(l->classes, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(l->train.size() + l->val.size(), 4u);
  std::ofstream(root_ / "bad.csv") << "only-one-column\n";
  EXPECT_TRUE(absl::IsFailedPrecondition(ScanDataset((root_ / "bad.csv").string(), {}).status()));
}

void WriteIdx(const fs::path& p, uint32_t magic, const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
  std::ofstream f(p, std::ios::binary);
  auto be = [&](uint32_t v) {
    char b[4] = {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
    f.write(b, 4);
  };
  be(magic);
  for (auto d : dims) be(d);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

TEST_F(DatasetsTest, IdxAndLyingHeaders) {
  WriteIdx(root_ / "train-labels-idx1-ubyte", 0x801, {4}, {0, 1, 2, 1});
  WriteIdx(root_ / "train-images-idx3-ubyte", 0x803, {4, 2, 2}, std::vector<uint8_t>(16, 7));
  WriteIdx(root_ / "t10k-labels-idx1-ubyte", 0x801, {2}, {0, 2});
  WriteIdx(root_ / "t10k-images-idx3-ubyte", 0x803, {2, 2, 2}, std::vector<uint8_t>(8, 9));
  LayoutOptions o;
  o.classes = {"2", "0"};
  auto l = ScanDataset(root_.string(), o);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->format, "idx");
  EXPECT_EQ(l->classes, (std::vector<std::string>{"2", "0"}));
  EXPECT_EQ(l->train.size(), 2u);
  EXPECT_EQ(l->val.size(), 2u);
  auto imgs = ReadIdxImages((root_ / "train-images-idx3-ubyte").string());
  ASSERT_TRUE(imgs.ok());
  EXPECT_EQ(imgs->count, 4);
  // A header claiming a billion images of a truncated file is refused, not allocated.
  WriteIdx(root_ / "lie", 0x803, {1000000000, 4000, 4000}, {1, 2, 3});
  EXPECT_TRUE(absl::IsDataLoss(ReadIdxImages((root_ / "lie").string()).status()));
  WriteIdx(root_ / "short", 0x803, {10, 28, 28}, {1, 2, 3});
  EXPECT_TRUE(absl::IsDataLoss(ReadIdxImages((root_ / "short").string()).status()));
  o.classes = {"7"};
  EXPECT_TRUE(absl::IsInvalidArgument(ScanDataset(root_.string(), o).status()));
}

TEST_F(DatasetsTest, SingleClassAndEmpty) {
  Touch(root_ / "one/a.png");
  Touch(root_ / "one/b.png");
  auto s = ScanDataset(root_.string(), {});
  EXPECT_TRUE(absl::IsFailedPrecondition(s.status()));
  EXPECT_NE(s.status().message().find("at least 2"), std::string::npos);
  EXPECT_TRUE(absl::IsNotFound(ScanDataset((root_ / "missing").string(), {}).status()));
}

TEST_F(DatasetsTest, SandboxAndUris) {
  fs::create_directories(root_ / "roots/data/set");
  fs::create_directories(root_ / "outside");
  fs::create_symlink(root_ / "outside", root_ / "roots/data/link");
  const std::vector<std::string> roots = {(root_ / "roots/data").string()};
  EXPECT_TRUE(ResolveInside((root_ / "roots/data/set").string(), roots, "dataset").ok());
  EXPECT_TRUE(absl::IsPermissionDenied(ResolveInside((root_ / "roots/data/../../outside").string(), roots, "dataset").status()));
  EXPECT_TRUE(absl::IsPermissionDenied(ResolveInside((root_ / "roots/data/link").string(), roots, "dataset").status()));
  EXPECT_TRUE(absl::IsPermissionDenied(ResolveInside((root_ / "roots/database").string(), roots, "dataset").status()));
  EXPECT_TRUE(absl::IsNotFound(ResolveInside((root_ / "roots/data/nope").string(), roots, "dataset").status()));

  auto u = ParseDatasetUri("file:///a%20b/c?classes=x,y&max_per_class=5", "dataset_uri");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->path, "/a b/c");
  EXPECT_EQ(u->options.classes, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(u->options.max_per_class, 5);
  EXPECT_TRUE(absl::IsInvalidArgument(ParseDatasetUri("s3://b/k", "dataset_uri").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseDatasetUri("file://relative", "dataset_uri").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseDatasetUri("file:///a?bogus=1", "dataset_uri").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseDatasetUri("file:///a%00b", "dataset_uri").status()));
}

// Expects PERMISSION_DENIED with every needle in the message.
void ExpectDenied(const absl::Status& s, const std::vector<std::string>& needles) {
  EXPECT_TRUE(absl::IsPermissionDenied(s)) << s;
  for (const auto& n : needles) EXPECT_NE(s.message().find(n), std::string::npos) << n << " in " << s;
}

TEST_F(DatasetsTest, SandboxFollowsLinksAsTheKernelWould) {
  const fs::path in = root_ / "in";
  Touch(in / "a/1.png");
  Touch(root_ / "out/secret.png");
  fs::create_directories(root_ / "out/deep/er");
  fs::create_symlink("a/1.png", in / "alias.png");             // stays inside
  fs::create_symlink(root_ / "out/secret.png", in / "evil.png");  // leaves
  fs::create_symlink(root_ / "out/deep/er", in / "deeplink");  // a folder outside
  fs::create_symlink(root_ / "out/later.png", in / "dangling.png");
  fs::create_symlink("loop2", in / "loop1");
  fs::create_symlink("loop1", in / "loop2");
  const DatasetSandbox sandbox({in.string()}, "the test root");
  const std::string canonical_in = fs::canonical(in).string();

  auto alias = sandbox.ResolveInside((in / "alias.png").string(), "alias.png");
  ASSERT_TRUE(alias.ok()) << alias.status();
  EXPECT_EQ(*alias, canonical_in + "/a/1.png");
  EXPECT_TRUE(sandbox.ResolveInside(in.string(), "the root itself").ok());
  // A missing file inside is for the decoder to report, not the sandbox.
  EXPECT_EQ(*sandbox.ResolveInside((in / "a/missing.png").string(), "m"), canonical_in + "/a/missing.png");

  ExpectDenied(sandbox.ResolveInside((in / "evil.png").string(), "evil.png").status(),
               {"evil.png is a symlink to " + (root_ / "out/secret.png").string(), "outside the test root"});
  ExpectDenied(sandbox.ResolveInside((in / "a/../../out/secret.png").string(), "dotdot").status(),
               {"dotdot resolves outside the test root"});
  ExpectDenied(sandbox.ResolveInside("/etc/passwd", "abs").status(), {"abs resolves outside"});
  // Lexically "in/x.png"; the kernel climbs from the link's target instead.
  ExpectDenied(sandbox.ResolveInside((in / "deeplink/../../x.png").string(), "up").status(), {"up resolves outside"});
  // weakly_canonical would keep the link's own (inside) name.
  ExpectDenied(sandbox.ResolveInside((in / "dangling.png").string(), "dangling").status(),
               {"dangling is a symlink to"});
  ExpectDenied(sandbox.ResolveInside((in / "loop1").string(), "loop").status(), {"loop cannot be resolved"});
  // A sibling whose name starts like the root is not inside it.
  Touch(root_ / "inner/x.png");
  ExpectDenied(sandbox.ResolveInside((root_ / "inner/x.png").string(), "prefix").status(), {"outside"});
  // The message does not tell whether an outside path exists.
  EXPECT_EQ(sandbox.ResolveInside("/etc/passwd", "p").status().message(),
            sandbox.ResolveInside("/etc/no-such-file", "p").status().message());
}

TEST_F(DatasetsTest, SandboxRootsMayBeLinksAndSeveral) {
  fs::create_directories(root_ / "real/set");
  fs::create_directories(root_ / "other");
  fs::create_symlink(root_ / "real", root_ / "via");
  const DatasetSandbox sandbox({(root_ / "via").string(), (root_ / "other").string()}, "two roots");
  EXPECT_TRUE(sandbox.ResolveInside((root_ / "real/set").string(), "real").ok());
  EXPECT_TRUE(sandbox.ResolveInside((root_ / "other/x").string(), "other").ok());
  ExpectDenied(sandbox.ResolveInside(root_.string(), "parent").status(), {"parent resolves outside two roots"});
  const DatasetSandbox none({}, "no roots");
  ExpectDenied(none.ResolveInside((root_ / "real").string(), "any").status(), {"outside no roots"});
}

TEST_F(DatasetsTest, ManifestRowsStayInTheDatasetFolder) {
  const fs::path set = root_ / "set";
  for (int i = 0; i < 4; ++i) Touch(set / "img" / (std::to_string(i) + ".png"));
  Touch(root_ / "sibling/s.png");
  fs::create_symlink("img/0.png", set / "alias.png");
  const std::string rows = "path,label\nimg/0.png,x\nimg/1.png,y\nimg/2.png,x\nimg/3.png,y\nalias.png,x\n";
  std::ofstream(set / "manifest.csv") << rows;
  ASSERT_TRUE(ScanDataset(set.string(), {}).ok()) << ScanDataset(set.string(), {}).status();

  std::ofstream(set / "manifest.csv") << rows << "/etc/shadow,y\n";
  ExpectDenied(ScanDataset(set.string(), {}).status(),
               {(set / "manifest.csv").string() + " line 7: \"/etc/shadow\" resolves outside the dataset's folder " +
                set.string()});
  std::ofstream(set / "manifest.csv") << rows << "../../../../../../etc/passwd,y\n";
  ExpectDenied(ScanDataset(set.string(), {}).status(), {"line 7: \"../../../../../../etc/passwd\" resolves outside"});
  // A sibling folder is outside the dataset's own folder, but inside roots
  // that hold both (file:// datasets are given the server's roots).
  std::ofstream(set / "manifest.csv") << rows << "../sibling/s.png,y\n";
  ExpectDenied(ScanDataset(set.string(), {}).status(), {"line 7: \"../sibling/s.png\""});
  LayoutOptions in_roots;
  in_roots.roots = {root_.string()};
  EXPECT_TRUE(ScanDataset(set.string(), in_roots).ok());
  in_roots.roots = {set.string(), (root_ / "elsewhere").string()};
  ExpectDenied(ScanDataset(set.string(), in_roots).status(),
               {"outside the dataset roots (" + set.string() + ", " + (root_ / "elsewhere").string() + ")"});
  // A manifest given as a file is held to its own folder.
  std::ofstream(set / "labels.csv") << rows << "../sibling/s.png,y\n";
  ExpectDenied(ScanDataset((set / "labels.csv").string(), {}).status(), {"labels.csv line 7"});
  // The manifest itself may not be a link out.
  Touch(root_ / "sibling/manifest.csv");
  fs::remove(set / "manifest.csv");
  fs::create_symlink(root_ / "sibling/manifest.csv", set / "manifest.csv");
  ExpectDenied(ScanDataset(set.string(), {}).status(), {"manifest.csv is a symlink to"});
}

TEST_F(DatasetsTest, ImageFolderLinksStayInside) {
  const fs::path set = root_ / "set";
  ft::testing::WriteTinyImageFolder(set / "train");
  ft::testing::WriteTinyImageFolder(set / "val", {"a", "b"}, 1);
  Touch(root_ / "out/c/secret.png");
  fs::create_symlink("0.png", set / "train/a/alias.png");
  auto ok = ScanDataset(set.string(), {});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->train.size(), 9u);

  fs::create_symlink(root_ / "out/c/secret.png", set / "train/a/evil.png");
  ExpectDenied(ScanDataset(set.string(), {}).status(),
               {(set / "train/a/evil.png").string() + " is a symlink to " + (root_ / "out/c/secret.png").string()});
  fs::remove(set / "train/a/evil.png");
  // A class folder that is a link out is refused before it is listed.
  fs::create_symlink(root_ / "out/c", set / "train/c");
  ExpectDenied(ScanDataset(set.string(), {}).status(), {(set / "train/c").string() + " is a symlink to"});
  fs::remove(set / "train/c");
  fs::create_symlink(root_ / "out", set / "val_link");
  fs::remove_all(set / "val");
  fs::create_symlink("val_link", set / "val");
  ExpectDenied(ScanDataset(set.string(), {}).status(), {(set / "val").string() + " is a symlink to val_link"});
}

TEST_F(DatasetsTest, IdxFilesStayInside) {
  const fs::path set = root_ / "set";
  fs::create_directories(set);
  Touch(root_ / "out/train-labels-idx1-ubyte");
  std::ofstream(set / "train-images-idx3-ubyte") << "x";
  fs::create_symlink(root_ / "out/train-labels-idx1-ubyte", set / "train-labels-idx1-ubyte");
  ExpectDenied(ScanDataset(set.string(), {}).status(), {"train-labels-idx1-ubyte is a symlink to"});
}

}  // namespace
}  // namespace ft::datasets
