#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/grpc_status/grpc_status.h"
#include "common/transfer/transfer.h"
#include "common/util/files.h"
#include "common/util/sha256.h"
#include "gtest/gtest.h"

namespace ft {
namespace {
namespace fs = std::filesystem;

// A chunk message with the fields ReceiveFile reads, as ModelChunk has them.
struct FakeChunk {
  int64_t offset_ = 0, total_size_ = 0;
  std::string data_, sha256_;
  int64_t offset() const { return offset_; }
  int64_t total_size() const { return total_size_; }
  const std::string& data() const { return data_; }
  const std::string& sha256() const { return sha256_; }
};

class TransferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("transfer-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
  // Sends `path` as chunks, the way a server stream would.
  std::vector<FakeChunk> Chunks(const std::string& path) {
    auto source = transfer::FileSource::Open(path);
    EXPECT_TRUE(source.ok()) << source.status();
    std::vector<FakeChunk> out;
    EXPECT_TRUE(transfer::SendFile(
                    **source,
                    [&](int64_t offset, std::string data) {
                      FakeChunk c;
                      c.offset_ = offset;
                      c.data_ = std::move(data);
                      if (offset == 0) {
                        c.total_size_ = (*source)->size();
                        c.sha256_ = (*source)->sha256();
                      }
                      out.push_back(std::move(c));
                      return true;
                    },
                    "test")
                    .ok());
    return out;
  }
  absl::Status Receive(const std::vector<FakeChunk>& chunks, const std::string& to, bool* cancelled = nullptr,
                       std::function<bool()> stop = nullptr) {
    auto sink = transfer::FileSink::Create(to, "the file");
    EXPECT_TRUE(sink.ok());
    size_t i = 0;
    return transfer::ReceiveFile<FakeChunk>(
        **sink,
        [&](FakeChunk* c) {
          if (i >= chunks.size()) return false;
          *c = chunks[i++];
          return true;
        },
        [&] {
          if (cancelled) *cancelled = true;
        },
        [] { return absl::OkStatus(); }, stop);
  }
  fs::path dir_;
};

TEST_F(TransferTest, RoundTripsFilesOfEverySize) {
  std::mt19937 rng(1);
  for (size_t size : {size_t{0}, size_t{1}, transfer::kChunkBytes - 1, transfer::kChunkBytes,
                      transfer::kChunkBytes * 3 + 17}) {
    std::string bytes(size, '\0');
    for (auto& b : bytes) b = static_cast<char>(rng());
    const std::string from = Write("in", bytes);
    const auto chunks = Chunks(from);
    EXPECT_EQ(chunks.size(), std::max<size_t>(1, (size + transfer::kChunkBytes - 1) / transfer::kChunkBytes));
    const std::string to = (dir_ / "out").string();
    bool cancelled = false;
    ASSERT_TRUE(Receive(chunks, to, &cancelled).ok()) << size;
    EXPECT_FALSE(cancelled);
    EXPECT_EQ(*util::ReadFile(to), bytes);
    EXPECT_FALSE(fs::exists(to + ".part"));
  }
}

TEST_F(TransferTest, RefusesWhatDidNotArriveWhole) {
  const std::string from = Write("in", std::string(transfer::kChunkBytes * 2 + 5, 'x'));
  const std::string to = (dir_ / "out").string();
  auto chunks = Chunks(from);
  // A chunk missing: out of order, the sender is cancelled, nothing published.
  auto gap = chunks;
  gap.erase(gap.begin() + 1);
  bool cancelled = false;
  auto s = Receive(gap, to, &cancelled);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_NE(s.message().find("out of order"), std::string::npos) << s;
  EXPECT_TRUE(cancelled);
  EXPECT_FALSE(fs::exists(to));
  EXPECT_FALSE(fs::exists(to + ".part"));
  // The last chunk missing: too few bytes.
  auto short_chunks = chunks;
  short_chunks.pop_back();
  s = Receive(short_chunks, to);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_NE(s.message().find("the file arrived corrupted"), std::string::npos) << s;
  EXPECT_FALSE(fs::exists(to));
  // A flipped byte: the digest differs.
  auto flipped = chunks;
  flipped[2].data_[0] = 'y';
  s = Receive(flipped, to);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_FALSE(fs::exists(to));
  // Asked to stop: CANCELLED, and the sender is told.
  cancelled = false;
  s = Receive(chunks, to, &cancelled, [] { return true; });
  EXPECT_TRUE(absl::IsCancelled(s)) << s;
  EXPECT_TRUE(cancelled);
  EXPECT_FALSE(fs::exists(to));
}

TEST_F(TransferTest, SourceErrors) {
  EXPECT_TRUE(absl::IsNotFound(transfer::FileSource::Open((dir_ / "missing").string()).status()));
  const std::string from = Write("in", "abc");
  auto source = transfer::FileSource::Open(from, "given-digest");
  ASSERT_TRUE(source.ok());
  EXPECT_EQ((*source)->sha256(), "given-digest");
  auto gone = transfer::SendFile(**source, [](int64_t, std::string) { return false; }, "sending x");
  EXPECT_TRUE(absl::IsUnavailable(gone));
  EXPECT_EQ(gone.message(), "sending x: the receiver went away");
  EXPECT_EQ((*transfer::FileSource::Open(from))->sha256(), util::Sha256Hex("abc"));
}

TEST(GrpcStatusTest, BothWaysAndTruncated) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  auto g = ToGrpcStatus(absl::NotFoundError("no job 'x'"));
  EXPECT_EQ(g.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(g.error_message(), "no job 'x'");
  auto back = FromGrpcStatus(g, "getting x");
  EXPECT_TRUE(absl::IsNotFound(back));
  EXPECT_EQ(back.message(), "getting x: no job 'x'");
  EXPECT_EQ(FromGrpcStatus(g).message(), "no job 'x'");
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  // Long messages keep their head and say they were cut, at a UTF-8 boundary.
  std::string long_message(5000, 'a');
  for (size_t i = 0; i < long_message.size(); i += 3) long_message.replace(i, 2, "\xc3\xa9");
  long_message.resize(5000);
  auto cut = ToGrpcStatus(absl::InvalidArgumentError(long_message)).error_message();
  EXPECT_LE(cut.size(), kGrpcErrorMessageLimit);
  EXPECT_EQ(cut.substr(cut.size() - 14), "...[truncated]");
  const std::string head = cut.substr(0, cut.size() - 14);
  EXPECT_EQ(head, long_message.substr(0, head.size()));
  EXPECT_NE(static_cast<unsigned char>(long_message[head.size()]) & 0xC0, 0x80u);
  for (int code = 1; code <= 16; ++code) {
    const absl::Status s(static_cast<absl::StatusCode>(code), "m");
    EXPECT_EQ(FromGrpcStatus(ToGrpcStatus(s)), s) << code;
  }
}

}  // namespace
}  // namespace ft
