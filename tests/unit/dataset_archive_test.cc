// The safe archive extractor, the packer, and the uploaded-dataset store.
// Fixture archives are written with libarchive in the test itself.
#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "common/util/clock.h"
#include "common/util/files.h"
#include "common/util/sha256.h"
#include "common/datasets/archive.h"
#include "server/datasets/dataset_store.h"
#include "common/util/tenant.h"
#include "common/datasets/layout.h"
#include "server/datasets/resolver.h"

namespace ft::datasets {
namespace {
namespace fs = std::filesystem;

struct Entry {
  Entry(std::string n, std::string d, int t = AE_IFREG, std::string l = "", bool h = false)
      : name(std::move(n)), data(std::move(d)), type(t), link(std::move(l)), hardlink(h) {}
  std::string name;
  std::string data;
  int type;
  std::string link;  // symlink target, or hard link target when hardlink
  bool hardlink;
};

// Writes `entries` as `format`: tar, tar.gz or zip.
void WriteArchive(const fs::path& path, const std::vector<Entry>& entries, const std::string& format) {
  archive* a = archive_write_new();
  if (format == "zip") {
    archive_write_set_format_zip(a);
  } else {
    archive_write_set_format_pax_restricted(a);
    if (format == "tar.gz") archive_write_add_filter_gzip(a);
  }
  ASSERT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK) << archive_error_string(a);
  for (const auto& e : entries) {
    archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, e.name.c_str());
    archive_entry_set_mtime(entry, 0, 0);
    if (e.hardlink) {
      archive_entry_set_filetype(entry, AE_IFREG);
      archive_entry_set_perm(entry, 0644);
      archive_entry_set_hardlink(entry, e.link.c_str());
      archive_entry_set_size(entry, 0);
    } else {
      archive_entry_set_filetype(entry, e.type);
      archive_entry_set_perm(entry, e.type == AE_IFDIR ? 0755 : 0644);
      if (e.type == AE_IFLNK) archive_entry_set_symlink(entry, e.link.c_str());
      if (e.type == AE_IFCHR) archive_entry_set_rdev(entry, makedev(1, 3));
      archive_entry_set_size(entry, e.type == AE_IFREG ? static_cast<la_int64_t>(e.data.size()) : 0);
    }
    ASSERT_EQ(archive_write_header(a, entry), ARCHIVE_OK) << e.name << ": " << archive_error_string(a);
    if (!e.hardlink && e.type == AE_IFREG && !e.data.empty()) {
      ASSERT_EQ(archive_write_data(a, e.data.data(), e.data.size()), static_cast<la_ssize_t>(e.data.size()));
    }
    archive_entry_free(entry);
  }
  ASSERT_EQ(archive_write_close(a), ARCHIVE_OK);
  archive_write_free(a);
}

std::string Read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A trainable ImageFolder (the scan does not decode images).
std::vector<Entry> ImageFolder(const std::string& prefix = "") {
  std::vector<Entry> out;
  for (const char* split : {"train", "val"}) {
    for (const char* cls : {"cat", "dog"}) {
      for (int i = 0; i < 3; ++i) {
        out.push_back({absl::StrCat(prefix, split, "/", cls, "/", i, ".png"), absl::StrCat(split, cls, i)});
      }
    }
  }
  return out;
}

class ArchiveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("ft-archive-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "out");
  }
  void TearDown() override { fs::remove_all(root_); }

  absl::StatusOr<ExtractResult> Extract(const std::vector<Entry>& entries, const std::string& format = "tar",
                                        ExtractOptions options = {}) {
    const fs::path archive = root_ / ("fixture." + format);
    fs::remove(archive);
    WriteArchive(archive, entries, format);
    return ExtractArchive(archive.string(), Dest().string(), options);
  }
  fs::path Dest() const { return root_ / "out" / "dest"; }
  // Nothing but `dest` (when it succeeded) may be left in the parent folder.
  std::vector<std::string> Leftovers() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(root_ / "out")) {
      if (e.path() != Dest()) out.push_back(e.path().filename().string());
    }
    return out;
  }
  void ExpectRefused(const absl::StatusOr<ExtractResult>& r, absl::StatusCode code, const std::string& needle) {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status();
    EXPECT_FALSE(fs::exists(Dest()));
    EXPECT_TRUE(Leftovers().empty());
  }

  fs::path root_;
};

TEST_F(ArchiveTest, ExtractsTarGzAndZip) {
  for (const std::string format : {"tar", "tar.gz", "zip"}) {
    fs::remove_all(Dest());
    auto r = Extract(ImageFolder(), format);
    ASSERT_TRUE(r.ok()) << format << ": " << r.status();
    EXPECT_EQ(r->archive_format, format);
    EXPECT_EQ(r->root, Dest().string());
    EXPECT_EQ(r->entries, 12);
    EXPECT_EQ(Read(Dest() / "train/dog/2.png"), "traindog2");
    EXPECT_EQ(Read(Dest() / "val/cat/0.png"), "valcat0");
    struct stat st;
    ASSERT_EQ(::stat((Dest() / "val/cat/0.png").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0644u);
    auto layout = ScanDataset(r->root, {});
    ASSERT_TRUE(layout.ok()) << layout.status();
    EXPECT_EQ(layout->train.size(), 6u);
    EXPECT_TRUE(Leftovers().empty());
  }
}

TEST_F(ArchiveTest, UnwrapsASingleTopLevelFolder) {
  auto entries = ImageFolder("shapes/");
  entries.insert(entries.begin(), Entry{"shapes/", "", AE_IFDIR});
  entries.push_back({"__MACOSX/shapes/._x.png", "resource fork"});
  entries.push_back({"shapes/train/cat/._0.png", "resource fork"});
  auto r = Extract(entries, "tar.gz");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->root, (Dest() / "shapes").string());
  EXPECT_FALSE(fs::exists(Dest() / "__MACOSX"));
  EXPECT_FALSE(fs::exists(Dest() / "shapes/train/cat/._0.png"));
  EXPECT_EQ(Read(fs::path(r->root) / "train/cat/1.png"), "traincat1");

  ExtractOptions keep;
  keep.unwrap_single_directory = false;
  fs::remove_all(Dest());
  auto kept = Extract(entries, "tar.gz", keep);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->root, Dest().string());
}

TEST_F(ArchiveTest, RefusesDotDotAndAbsolutePaths) {
  auto entries = ImageFolder();
  entries.push_back({"train/../../evil.txt", "pwned"});
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'train/../../evil.txt'");
  EXPECT_FALSE(fs::exists(root_ / "evil.txt"));
  EXPECT_FALSE(fs::exists(root_ / "out" / "evil.txt"));

  entries.back() = {"/tmp/ft-evil-absolute.txt", "pwned"};
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'/tmp/ft-evil-absolute.txt'");
  EXPECT_NE(Extract(entries).status().message().find("absolute"), std::string::npos);
}

TEST_F(ArchiveTest, RefusesSymlinksLeavingTheArchive) {
  auto entries = ImageFolder();
  entries.push_back({"train/cat/up.png", "", AE_IFLNK, "../../../secret.png"});
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'train/cat/up.png'");
  entries.back() = {"abs.png", "", AE_IFLNK, "/etc/passwd"};
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'abs.png'");
  // Each link stays inside on paper; through `b` the second one climbs out.
  entries.back() = {"b", "", AE_IFLNK, "."};
  entries.push_back({"c", "", AE_IFLNK, "b/.."});
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'c'");
}

TEST_F(ArchiveTest, RefusesWritingThroughASymlink) {
  auto entries = ImageFolder();
  entries.push_back({"train/link", "", AE_IFLNK, "cat"});
  entries.push_back({"train/link/x.png", "through the link"});
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'train/link/x.png'");
  EXPECT_FALSE(fs::exists(root_ / "out" / "dest" / "train/cat/x.png"));
}

TEST_F(ArchiveTest, KeepsLinksThatStayInside) {
  auto entries = ImageFolder();
  entries.push_back({"train/cat/alias.png", "", AE_IFLNK, "0.png"});
  entries.push_back({"train/dog/copy.png", "", AE_IFREG, "train/dog/0.png", /*hardlink=*/true});
  auto r = Extract(entries);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Read(Dest() / "train/cat/alias.png"), "traincat0");
  EXPECT_EQ(Read(Dest() / "train/dog/copy.png"), "traindog0");
}

TEST_F(ArchiveTest, RefusesBadHardLinks) {
  auto entries = ImageFolder();
  entries.push_back({"h.png", "", AE_IFREG, "../../etc/passwd", true});
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'h.png'");
  entries.back() = {"h.png", "", AE_IFREG, "not/there.png", true};
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'h.png'");
}

// The same refusals for zip members, which libarchive reads by another path.
TEST_F(ArchiveTest, RefusesUnsafeZipMembers) {
  auto entries = ImageFolder();
  entries.push_back({"train/../../evil.txt", "pwned"});
  ExpectRefused(Extract(entries, "zip"), absl::StatusCode::kInvalidArgument, "'train/../../evil.txt'");
  entries.back() = {"/tmp/ft-evil-zip.txt", "pwned"};
  ExpectRefused(Extract(entries, "zip"), absl::StatusCode::kInvalidArgument, "absolute");
  EXPECT_FALSE(fs::exists("/tmp/ft-evil-zip.txt"));
  entries.back() = {"train/cat/up.png", "", AE_IFLNK, "../../../secret.png"};
  ExpectRefused(Extract(entries, "zip"), absl::StatusCode::kInvalidArgument, "'train/cat/up.png'");
  entries.back() = {"abs.png", "", AE_IFLNK, "/etc/passwd"};
  ExpectRefused(Extract(entries, "zip"), absl::StatusCode::kInvalidArgument, "'abs.png'");
  entries.back() = {"train/cat/alias.png", "", AE_IFLNK, "0.png"};
  auto r = Extract(entries, "zip");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Read(Dest() / "train/cat/alias.png"), "traincat0");
}

TEST_F(ArchiveTest, RefusesHardLinksOutOrThroughSymlinks) {
  auto entries = ImageFolder();
  entries.push_back({"h.png", "", AE_IFREG, "/etc/passwd", true});
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'h.png'");
  // `l` stays inside, but a hard link made through it could be aimed
  // anywhere a later link points; links are only to real files.
  entries.back() = {"l", "", AE_IFLNK, "train"};
  entries.push_back({"h.png", "", AE_IFREG, "l/cat/0.png", true});
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'h.png'");
  entries.pop_back();
  entries.push_back({"h.png", "", AE_IFREG, "l", true});
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'h.png'");
}

TEST_F(ArchiveTest, RefusesSpecialFilesAndDuplicates) {
  auto entries = ImageFolder();
  entries.push_back({"null", "", AE_IFCHR});
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'null': device files");
  entries.back() = {"pipe", "", AE_IFIFO};
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'pipe'");
  entries.back() = {"train/cat/0.png", "again"};
  ExpectRefused(Extract(entries), absl::StatusCode::kInvalidArgument, "'train/cat/0.png'");
}

TEST_F(ArchiveTest, CapsExtractedBytesWhateverTheHeadersSay) {
  // 8 MiB of zeros compress to a few KiB: a small zip bomb.
  std::vector<Entry> entries = {{"bomb.png", std::string(8 << 20, '\0')}};
  ExtractOptions options;
  options.max_bytes = 1 << 20;
  for (const std::string format : {"zip", "tar.gz"}) {
    auto r = Extract(entries, format, options);
    ExpectRefused(r, absl::StatusCode::kResourceExhausted, "more than 1048576 bytes");
    EXPECT_LT(fs::file_size(root_ / ("fixture." + format)), 100000u) << format;
  }
}

TEST_F(ArchiveTest, CapsEntries) {
  ExtractOptions options;
  options.max_entries = 5;
  ExpectRefused(Extract(ImageFolder(), "tar", options), absl::StatusCode::kResourceExhausted, "more than 5 entries");
}

TEST_F(ArchiveTest, RefusesWhatIsNotAnArchive) {
  const fs::path junk = root_ / "junk.tar.gz";
  std::ofstream(junk) << std::string(5000, 'j');
  auto r = ExtractArchive(junk.string(), Dest().string(), {});
  ExpectRefused(r, absl::StatusCode::kInvalidArgument, "not a tar or zip archive");
  EXPECT_TRUE(absl::IsNotFound(ExtractArchive((root_ / "missing.tar").string(), Dest().string(), {}).status()));
  ASSERT_TRUE(Extract(ImageFolder()).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(ExtractArchive((root_ / "fixture.tar").string(), Dest().string(), {}).status()));
}

TEST_F(ArchiveTest, PackDirectoryIsDeterministicAndRoundTrips) {
  const fs::path src = root_ / "src";
  for (const auto& e : ImageFolder()) {
    fs::create_directories((src / e.name).parent_path());
    std::ofstream(src / e.name) << e.data;
  }
  // A link to an image elsewhere is packed as the image.
  std::ofstream(root_ / "elsewhere.png") << "outside image";
  fs::create_symlink(root_ / "elsewhere.png", src / "train/cat/linked.png");
  ASSERT_TRUE(PackDirectory(src.string(), (root_ / "a.tar").string()).ok());
  fs::last_write_time(src / "val/dog/1.png", fs::file_time_type::clock::now() - std::chrono::hours(5));
  ASSERT_TRUE(PackDirectory(src.string(), (root_ / "b.tar").string()).ok());
  EXPECT_EQ(*util::Sha256File((root_ / "a.tar").string()), *util::Sha256File((root_ / "b.tar").string()));
  auto r = ExtractArchive((root_ / "a.tar").string(), Dest().string(), {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->archive_format, "tar");
  EXPECT_EQ(Read(Dest() / "train/cat/linked.png"), "outside image");
  EXPECT_FALSE(fs::is_symlink(Dest() / "train/cat/linked.png"));
  EXPECT_EQ(Read(Dest() / "val/dog/2.png"), "valdog2");

  fs::create_symlink(root_ / "missing.png", src / "broken.png");
  auto broken = PackDirectory(src.string(), (root_ / "c.tar").string());
  EXPECT_TRUE(absl::IsInvalidArgument(broken)) << broken;
  EXPECT_TRUE(absl::IsNotFound(PackDirectory((root_ / "nope").string(), (root_ / "d.tar").string())));
}

TEST(ArchiveNames, Extensions) {
  EXPECT_TRUE(HasArchiveExtension("/a/b.tar"));
  EXPECT_TRUE(HasArchiveExtension("/a/b.TAR.GZ"));
  EXPECT_TRUE(HasArchiveExtension("b.tgz"));
  EXPECT_TRUE(HasArchiveExtension("b.zip"));
  EXPECT_FALSE(HasArchiveExtension("/a/manifest.csv"));
  EXPECT_FALSE(HasArchiveExtension("/a/train-images-idx3-ubyte.gz"));
  EXPECT_TRUE(IsValidDatasetName("flowers-v2.1_small"));
  EXPECT_FALSE(IsValidDatasetName(""));
  EXPECT_FALSE(IsValidDatasetName(".."));
  EXPECT_FALSE(IsValidDatasetName("a/b"));
  EXPECT_FALSE(IsValidDatasetName(std::string(65, 'a')));
}

TEST(DatasetUris, DatasetScheme) {
  auto u = ParseDatasetUri("dataset://flowers?classes=a,b&max_per_class=3", "dataset_uri");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->dataset_name, "flowers");
  EXPECT_TRUE(u->path.empty());
  EXPECT_EQ(u->options.classes, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(u->options.max_per_class, 3);
  EXPECT_TRUE(absl::IsInvalidArgument(ParseDatasetUri("dataset://", "dataset_uri").status()));
}

class DatasetStoreTest : public ArchiveTest {
 protected:
  void SetUp() override {
    ArchiveTest::SetUp();
    OpenStore();
  }
  void OpenStore() {
    DatasetStoreOptions o;
    o.root = (root_ / "uploaded").string();
    o.cache_root = (root_ / "cache").string();
    o.max_upload_bytes = 1 << 20;
    o.extract.max_bytes = 4 << 20;
    o.clock = &clock_;
    auto s = DatasetStore::Create(o);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }
  std::string Bytes(const std::vector<Entry>& entries, const std::string& format = "tar.gz") {
    const fs::path p = root_ / ("upload." + format);
    fs::remove(p);
    WriteArchive(p, entries, format);
    return Read(p);
  }
  absl::StatusOr<pb::Dataset> Upload(const std::string& name, const std::string& bytes, std::string sha = "",
                                     int64_t declared = -1, const std::string& tenant = util::kDefaultTenant) {
    pb::DatasetUploadHeader h;
    h.set_name(name);
    h.set_size_bytes(declared >= 0 ? declared : static_cast<int64_t>(bytes.size()));
    h.set_sha256(sha.empty() ? util::Sha256Hex(bytes) : sha);
    auto upload = store_->BeginUpload(tenant, h);
    if (!upload.ok()) return upload.status();
    for (size_t off = 0; off < bytes.size(); off += 1000) {
      auto s = (*upload)->Append(absl::string_view(bytes).substr(off, 1000));
      if (!s.ok()) return s;
    }
    clock_.Advance(absl::Seconds(1));
    auto committed = store_->Commit(*std::move(upload));
    if (!committed.ok()) return committed;
    // The store extracts in its own pool; wait for it to settle.
    pb::Dataset d = *committed;
    while (d.state() == pb::DATASET_EXTRACTING) {
      absl::SleepFor(absl::Milliseconds(5));
      auto now = store_->Get(tenant, name);
      if (!now.ok()) return now.status();
      d = *std::move(now);
    }
    if (d.state() == pb::DATASET_FAILED) return absl::Status(static_cast<absl::StatusCode>(d.error_code()), d.error());
    return d;
  }

  util::FakeClock clock_;
  std::unique_ptr<DatasetStore> store_;
};

TEST_F(DatasetStoreTest, UploadIsStoredByDigestAndListed) {
  const std::string bytes = Bytes(ImageFolder("flowers/"));
  auto d = Upload("flowers", bytes);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->name(), "flowers");
  EXPECT_EQ(d->sha256(), util::Sha256Hex(bytes));
  EXPECT_EQ(d->size_bytes(), static_cast<int64_t>(bytes.size()));
  EXPECT_EQ(d->format(), "imagefolder");
  EXPECT_EQ(d->archive_format(), "tar.gz");
  EXPECT_EQ(d->num_classes(), 2);
  EXPECT_EQ(d->num_images(), 12);
  EXPECT_GT(d->create_time().seconds(), 0);
  EXPECT_TRUE(fs::is_directory(root_ / "uploaded" / d->sha256() / "data" / "flowers" / "train"));

  auto path = store_->DataPath(util::kDefaultTenant, "flowers");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_TRUE(ScanDataset(*path, {}).ok());
  auto archive = store_->ArchivePath(d->sha256());
  ASSERT_TRUE(archive.ok()) << archive.status();
  EXPECT_EQ(*util::Sha256File(*archive), d->sha256());
  EXPECT_TRUE(absl::IsNotFound(store_->ArchivePath(std::string(64, 'a')).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store_->ArchivePath("../../etc/passwd").status()));

  // The same bytes again: the same record. Other bytes: the name is taken.
  auto again = Upload("flowers", bytes);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->create_time().seconds(), d->create_time().seconds());
  auto other = Upload("flowers", Bytes(ImageFolder(), "zip"));
  EXPECT_TRUE(absl::IsAlreadyExists(other.status())) << other.status();
  auto zip = Upload("flowers-zip", Bytes(ImageFolder(), "zip"));
  ASSERT_TRUE(zip.ok()) << zip.status();
  EXPECT_EQ(zip->archive_format(), "zip");

  auto list = store_->List("");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name(), "flowers-zip");  // newest first
  EXPECT_EQ((*list)[1].sha256(), d->sha256());

  // A restart keeps them.
  store_.reset();
  OpenStore();
  auto listed = store_->List("");
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 2u);
}

TEST_F(DatasetStoreTest, RefusesBadUploads) {
  const std::string bytes = Bytes(ImageFolder());
  EXPECT_TRUE(absl::IsDataLoss(Upload("a", bytes, std::string(64, 'b')).status()));
  EXPECT_TRUE(absl::IsDataLoss(Upload("a", bytes, "", static_cast<int64_t>(bytes.size()) + 10).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(Upload("a", bytes, "", 10).status()));  // more bytes than declared
  EXPECT_TRUE(absl::IsInvalidArgument(Upload("a", bytes, "xyz").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(Upload("../a", bytes).status()));
  EXPECT_TRUE(absl::IsResourceExhausted(Upload("big", bytes, "", 2 << 20).status()));
  auto evil = Upload("evil", Bytes({{"../evil.png", "x"}}));
  EXPECT_TRUE(absl::IsInvalidArgument(evil.status()));
  EXPECT_NE(evil.status().message().find("../evil.png"), std::string::npos) << evil.status();
  auto bomb = Upload("bomb", Bytes({{"bomb.png", std::string(8 << 20, '\0')}}, "zip"));
  EXPECT_TRUE(absl::IsResourceExhausted(bomb.status())) << bomb.status();
  auto one_class = Upload("one", Bytes({{"cat/1.png", "x"}, {"cat/2.png", "y"}}));
  EXPECT_TRUE(absl::IsFailedPrecondition(one_class.status())) << one_class.status();
  // (Its one folder is unwrapped as an archive's wrapper, so the images lie at the top.)
  EXPECT_EQ(std::string(one_class.status().message()),
            "the archive is not a usable dataset: it has no training images (looked for imagefolder layout: "
            "<class>/<image> or train/<class>/<image>)");
  auto one_split_class = Upload("one2", Bytes({{"train/cat/1.png", "x"}, {"val/cat/2.png", "y"}}));
  EXPECT_EQ(std::string(one_split_class.status().message()),
            "the archive is not a usable dataset: it has 1 class ('cat') with images; fine-tuning a classifier "
            "needs at least 2");
  // Uploads refused at commit leave nothing; those whose extraction failed
  // stay listed as FAILED, with the reason, and keep no files.
  auto list = store_->List("");
  ASSERT_TRUE(list.ok());
  std::set<std::string> failed;
  for (const auto& d : *list) {
    EXPECT_EQ(d.state(), pb::DATASET_FAILED) << d.name();
    EXPECT_FALSE(d.error().empty()) << d.name();
    failed.insert(d.name());
  }
  EXPECT_EQ(failed, (std::set<std::string>{"bomb", "evil", "one", "one2"}));
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->DataPath(util::kDefaultTenant, "evil").status()));
  for (const auto& e : fs::directory_iterator(root_ / "uploaded")) {
    const std::string n = e.path().filename().string();
    if (n == "names") {
      for (const auto& f : fs::directory_iterator(e.path())) {
        EXPECT_TRUE(failed.count(f.path().stem().string())) << f.path();
      }
    } else if (n == ".incoming") {
      EXPECT_TRUE(fs::is_empty(e.path())) << n;
    } else {
      ADD_FAILURE() << "left behind: " << n;
    }
  }
}

// An upload is untrusted bytes: its manifest may not name files outside
// the extracted folder. Refused at extraction, and wherever it is named.
TEST_F(DatasetStoreTest, RefusesManifestsThatLeaveTheArchive) {
  auto entries = ImageFolder();
  std::string rows = "path,label\n";
  for (const auto& e : entries) rows += e.name + "," + e.name.substr(e.name.find('/') + 1, 3) + "\n";
  entries.push_back({"manifest.csv", rows + "/etc/shadow,cat\n"});
  auto shadow = Upload("shadow", Bytes(entries));
  EXPECT_TRUE(absl::IsPermissionDenied(shadow.status())) << shadow.status();
  EXPECT_EQ(shadow.status().message(),
            "the archive is not a usable dataset: manifest.csv line 14: \"/etc/shadow\" resolves outside the archive");
  auto path = store_->DataPath(util::kDefaultTenant, "shadow");
  EXPECT_TRUE(absl::IsPermissionDenied(path.status())) << path.status();
  EXPECT_NE(path.status().message().find("manifest.csv line 14"), std::string::npos) << path.status();

  entries.back() = {"manifest.csv", rows + "train/../../x.png,cat\n"};
  auto up = Upload("up", Bytes(entries));
  EXPECT_TRUE(absl::IsPermissionDenied(up.status())) << up.status();
  EXPECT_NE(up.status().message().find("line 14: \"train/../../x.png\" resolves outside the archive"),
            std::string::npos)
      << up.status();
  // Rows through a link that stays inside are fine.
  entries.back() = {"manifest.csv", rows + "alias.png,cat\n"};
  entries.push_back({"alias.png", "", AE_IFLNK, "train/cat/0.png"});
  auto alias = Upload("alias", Bytes(entries));
  ASSERT_TRUE(alias.ok()) << alias.status();
  EXPECT_EQ(alias->num_images(), 13);
}

TEST_F(DatasetStoreTest, NamesArePerTenant) {
  const std::string bytes = Bytes(ImageFolder());
  const std::string other = Bytes(ImageFolder("x/"));
  // Stored before tenants: a bare names/<name>.json, the default tenant's.
  ASSERT_TRUE(Upload("pets", bytes).ok());
  auto vision = Upload("pets", other, "", -1, "vision");
  ASSERT_TRUE(vision.ok()) << vision.status();
  EXPECT_EQ(vision->tenant(), "vision");
  auto audio = Upload("pets", bytes, "", -1, "audio");
  ASSERT_TRUE(audio.ok()) << audio.status();
  EXPECT_TRUE(fs::exists(root_ / "uploaded" / "names" / "pets.json"));
  EXPECT_EQ(store_->Get(util::kDefaultTenant, "pets")->tenant(), "default");
  EXPECT_EQ(store_->Get("vision", "pets")->sha256(), util::Sha256Hex(other));
  EXPECT_EQ(store_->Get("audio", "pets")->sha256(), util::Sha256Hex(bytes));
  EXPECT_TRUE(absl::IsNotFound(store_->Get("speech", "pets").status()));
  EXPECT_EQ(store_->List("")->size(), 3u);
  ASSERT_EQ(store_->List("vision")->size(), 1u);
  EXPECT_EQ(store_->List("vision")->at(0).tenant(), "vision");
  EXPECT_EQ(store_->TenantBytes("audio"), static_cast<int64_t>(bytes.size()));
  EXPECT_TRUE(store_->DataPath("vision", "pets").ok());

  // Deleting one tenant's leaves the others', and the digest they share.
  ASSERT_TRUE(store_->Delete("audio", "pets", nullptr).ok());
  EXPECT_TRUE(absl::IsNotFound(store_->Get("audio", "pets").status()));
  EXPECT_TRUE(store_->DataPath(util::kDefaultTenant, "pets").ok());
  EXPECT_TRUE(store_->Get("vision", "pets").ok());

  // A restart reads every tenant's records back.
  store_.reset();
  OpenStore();
  EXPECT_EQ(store_->List("")->size(), 2u);
  EXPECT_EQ(store_->Get("vision", "pets")->tenant(), "vision");
}

TEST_F(DatasetStoreTest, DeleteHonoursUsersAndSharedDigests) {
  const std::string bytes = Bytes(ImageFolder());
  auto a = Upload("a", bytes);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(Upload("b", bytes).ok());
  const fs::path digest_dir = root_ / "uploaded" / a->sha256();
  auto busy = store_->Delete(util::kDefaultTenant, "a", [](const pb::Dataset&) { return absl::FailedPreconditionError("job 1 uses it"); });
  EXPECT_TRUE(absl::IsFailedPrecondition(busy));
  EXPECT_TRUE(store_->Get(util::kDefaultTenant, "a").ok());
  ASSERT_TRUE(store_->Delete(util::kDefaultTenant, "a", nullptr).ok());
  EXPECT_TRUE(absl::IsNotFound(store_->Get(util::kDefaultTenant, "a").status()));
  EXPECT_TRUE(fs::exists(digest_dir));  // "b" still names it
  ASSERT_TRUE(store_->Delete(util::kDefaultTenant, "b", nullptr).ok());
  EXPECT_FALSE(fs::exists(digest_dir));
  EXPECT_TRUE(absl::IsNotFound(store_->Delete(util::kDefaultTenant, "b", nullptr)));

  // A digest no name refers to (a crash mid-delete) is collected on restart.
  ASSERT_TRUE(Upload("c", bytes).ok());
  fs::remove(root_ / "uploaded" / "names" / "c.json");
  store_.reset();
  OpenStore();
  EXPECT_FALSE(fs::exists(digest_dir));
}

TEST_F(DatasetStoreTest, LocatesUploadedAndArchivedDatasets) {
  const fs::path roots = root_ / "roots";
  fs::create_directories(roots);
  WriteArchive(roots / "shapes.tar.gz", ImageFolder("shapes/"), "tar.gz");
  const std::vector<std::string> allowed = {roots.string()};

  DatasetUri uri;
  uri.path = (roots / "shapes.tar.gz").string();
  auto first = LocateDataset(uri, allowed, store_.get(), util::kDefaultTenant);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->digest, *util::Sha256File(uri.path));
  EXPECT_TRUE(ScanDataset(first->path, {}).ok());
  auto second = LocateDataset(uri, allowed, store_.get(), util::kDefaultTenant);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->path, first->path);
  EXPECT_EQ(second->digest, first->digest);
  auto source = store_->ArchivePath(first->digest);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ(*source, uri.path);
  // A changed archive is a new digest with its own extraction.
  fs::remove(uri.path);
  WriteArchive(uri.path, ImageFolder(), "tar.gz");
  auto changed = LocateDataset(uri, allowed, store_.get(), util::kDefaultTenant);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_NE(changed->digest, first->digest);
  EXPECT_EQ(changed->digest, *util::Sha256File(uri.path));
  EXPECT_NE(changed->path, first->path);

  uri.path = (root_ / "outside.tar.gz").string();
  WriteArchive(uri.path, ImageFolder(), "tar.gz");
  EXPECT_TRUE(absl::IsPermissionDenied(LocateDataset(uri, allowed, store_.get(), util::kDefaultTenant).status()));

  DatasetUri named;
  named.dataset_name = "nope";
  auto missing = LocateDataset(named, allowed, store_.get(), util::kDefaultTenant);
  EXPECT_TRUE(absl::IsNotFound(missing.status())) << missing.status();
  named.dataset_name = "bad/name";
  EXPECT_TRUE(absl::IsInvalidArgument(LocateDataset(named, allowed, store_.get(), util::kDefaultTenant).status()));
  named.dataset_name = "shapes";
  EXPECT_TRUE(absl::IsFailedPrecondition(LocateDataset(named, allowed, nullptr, util::kDefaultTenant).status()));
  auto up = Upload("shapes", Bytes(ImageFolder()));
  ASSERT_TRUE(up.ok()) << up.status();
  auto found = LocateDataset(named, allowed, store_.get(), util::kDefaultTenant);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->digest, up->sha256());
  EXPECT_TRUE(ScanDataset(found->path, {}).ok());
}

}  // namespace
}  // namespace ft::datasets
