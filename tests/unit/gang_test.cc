// Gang (worker/train/gang.h): two ranks in one process, on a real c10d
// TCPStore and ProcessGroupGloo over loopback. What is tested here is how a
// rank's failure reaches the others: reported in rank 0's store, read by a
// peer whose collective then fails, or by ranks still waiting for the group.
#include "worker/train/gang.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "absl/status/status.h"

namespace ft::worker {
namespace {

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

GangOptions Rank(int rank, int port) {
  GangOptions o;
  o.rank = rank;
  o.world_size = 2;
  o.master_host = "127.0.0.1";
  o.master_port = port;
  o.timeout = std::chrono::seconds(60);
  o.key_prefix = "lease-1/1";
  o.worker_id = rank == 0 ? "w0" : "w1";
  return o;
}

TEST(GangTest, TwoRanksSum) {
  const int port = FreePort();
  torch::Tensor one = torch::full({5}, 2.0f);
  std::thread peer([&] {
    auto g = Gang::Join(Rank(1, port));
    ASSERT_TRUE(g.ok()) << g.status();
    (*g)->AllReduceSum({one});
  });
  auto g = Gang::Join(Rank(0, port));
  ASSERT_TRUE(g.ok()) << g.status();
  torch::Tensor zero = torch::full({5}, 3.0f);
  (*g)->AllReduceSum({zero});
  peer.join();
  EXPECT_TRUE(torch::equal(zero, torch::full({5}, 5.0f)));
  EXPECT_TRUE(torch::equal(one, torch::full({5}, 5.0f)));
  EXPECT_FALSE((*g)->PeerFailure().has_value());
}

TEST(GangTest, APeersOwnFailureComesWithTheBrokenCollective) {
  const int port = FreePort();
  std::thread peer([&] {
    auto g = Gang::Join(Rank(1, port));
    ASSERT_TRUE(g.ok()) << g.status();
    (*g)->ReportFailure(absl::ResourceExhaustedError("out of memory"));
    // Leaving closes its connections.
  });
  auto g = Gang::Join(Rank(0, port));
  ASSERT_TRUE(g.ok()) << g.status();
  peer.join();
  EXPECT_THROW((*g)->AllReduceSum({torch::ones({3})}), GangError);
  EXPECT_TRUE((*g)->failed());
  const std::optional<absl::Status> why = (*g)->PeerFailure();
  ASSERT_TRUE(why.has_value());
  EXPECT_EQ(why->code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(why->message(), "rank 1 of 2 (worker w1): out of memory");
}

TEST(GangTest, ARankThatFailsBeforeJoiningEndsTheWaitAtOnce) {
  const int port = FreePort();
  std::thread peer([&] { Gang::ReportBeforeJoining(Rank(1, port), absl::NotFoundError("no dataset here")); });
  const auto start = std::chrono::steady_clock::now();
  auto g = Gang::Join(Rank(0, port));
  peer.join();
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(g.status().message(), "rank 1 of 2 (worker w1): no dataset here");
  // Not after the 60 s the ranks would wait for each other.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(50));
}

TEST(GangTest, ARank0ThatFailsBeforeJoiningHoldsItsStoreOpenToTellTheOthers) {
  const int port = FreePort();
  std::thread zero([&] { Gang::ReportBeforeJoining(Rank(0, port), absl::NotFoundError("no dataset on rank 0")); });
  // Rank 1 comes later, as after fetching its own copy of the dataset.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  auto g = Gang::Join(Rank(1, port));
  zero.join();
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(g.status().message(), "rank 0 of 2 (worker w0): no dataset on rank 0");
}

TEST(GangTest, ARankThatFindsTheJobEndedLearnsRank0sReasonAndLetsItsStoreClose) {
  const int port = FreePort();
  const auto start = std::chrono::steady_clock::now();
  // Rank 0 failed the job before the group formed; rank 1 finds its lease
  // gone, before or after rank 0 has written why.
  std::thread zero([&] { Gang::ReportBeforeJoining(Rank(0, port), absl::NotFoundError("no dataset on rank 0")); });
  const std::optional<absl::Status> why = Gang::PeerFailureBeforeJoining(Rank(1, port));
  zero.join();
  ASSERT_TRUE(why.has_value());
  EXPECT_EQ(why->code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(why->message(), "rank 0 of 2 (worker w0): no dataset on rank 0");
  // Rank 0's store closed once rank 1 had read it, not after the 60 s.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

TEST(GangTest, ARankThatFindsTheJobEndedWithoutAReasonGivesUp) {
  // No rank 0 at all (it died): nothing to learn, within the timeout.
  GangOptions one = Rank(1, FreePort());
  one.timeout = std::chrono::milliseconds(1500);
  EXPECT_FALSE(Gang::PeerFailureBeforeJoining(one).has_value());
  // Nor from a rank 0 that is alive and waiting for the group: no reason,
  // and rank 1 does not count itself in, so no group forms.
  const int port = FreePort();
  GangOptions zero = Rank(0, port);
  zero.timeout = std::chrono::seconds(4);
  absl::Status zero_status;
  std::thread first([&] { zero_status = Gang::Join(zero).status(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  GangOptions late = Rank(1, port);
  late.timeout = std::chrono::milliseconds(1500);
  EXPECT_FALSE(Gang::PeerFailureBeforeJoining(late).has_value());
  first.join();
  EXPECT_EQ(zero_status.code(), absl::StatusCode::kUnavailable) << zero_status;
}

TEST(GangTest, AFailureOfAnotherGroupIsNotThisGroups) {
  const int port = FreePort();
  std::thread peer([&] {
    GangOptions earlier = Rank(1, port);
    earlier.key_prefix = "lease-0/3";
    Gang::ReportBeforeJoining(earlier, absl::InternalError("an earlier attempt's failure"));
    auto g = Gang::Join(Rank(1, port));
    EXPECT_TRUE(g.ok()) << g.status();
  });
  auto g = Gang::Join(Rank(0, port));
  peer.join();
  EXPECT_TRUE(g.ok()) << g.status();
}

TEST(GangTest, AStoppedRankGivesUpAndTellsTheOthers) {
  const int port = FreePort();
  std::atomic<bool> stop{false};
  // Ranks 0 and 1 wait for a rank 2 that never comes; rank 1 is stopped.
  GangOptions zero = Rank(0, port), one = Rank(1, port);
  zero.world_size = one.world_size = 3;
  one.stopped = [&] { return stop.load(); };
  absl::Status zero_status, one_status;
  std::thread first([&] { zero_status = Gang::Join(zero).status(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::thread second([&] { one_status = Gang::Join(one).status(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  stop = true;
  second.join();
  first.join();
  EXPECT_EQ(one_status.code(), absl::StatusCode::kCancelled) << one_status;
  EXPECT_EQ(zero_status.code(), absl::StatusCode::kUnavailable) << zero_status;
  EXPECT_EQ(zero_status.message(), "rank 1 of 3 (worker w1): stopped before the group formed");
}

TEST(GangTest, NoPeerWithinTheTimeoutIsUnavailable) {
  GangOptions zero = Rank(0, FreePort());
  zero.timeout = std::chrono::milliseconds(1500);
  auto g = Gang::Join(zero);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(g.status().message().find("only 1 of 2 workers reached the group"), std::string::npos) << g.status();
}

}  // namespace
}  // namespace ft::worker
