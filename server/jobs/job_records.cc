#include "server/jobs/job_records.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/time_util.h"
#include "common/util/status.h"

namespace ft::server {
namespace {

using google::protobuf::util::TimeUtil;

void SetTimestamp(int64_t us, google::protobuf::Timestamp* ts) {
  if (us > 0) *ts = TimeUtil::MicrosecondsToTimestamp(us);
}

}  // namespace

bool IsTerminal(pb::JobState state) {
  return state == pb::SUCCEEDED || state == pb::FAILED || state == pb::CANCELLED;
}

absl::StatusOr<pb::ResolvedJob> ParseResolvedJob(const std::string& job_id, const std::string& bytes) {
  pb::ResolvedJob resolved;
  if (!resolved.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("job ", job_id, " has a corrupt spec"));
  }
  return resolved;
}

absl::StatusOr<pb::Job> JobFromRow(const JobRow& row) {
  pb::Job job;
  job.set_id(row.id);
  job.set_state(static_cast<pb::JobState>(row.state));
  FT_ASSIGN_OR_RETURN(pb::ResolvedJob resolved, ParseResolvedJob(row.id, row.resolved));
  *job.mutable_spec() = resolved.spec();
  job.set_attempts(static_cast<int32_t>(row.attempts));
  job.set_error(row.error);
  job.set_model_id(row.model_id);
  job.mutable_metrics()->ParseFromString(row.metrics);
  SetTimestamp(row.create_us, job.mutable_create_time());
  SetTimestamp(row.start_us, job.mutable_start_time());
  SetTimestamp(row.end_us, job.mutable_end_time());
  job.set_worker_id(row.worker_id);
  job.set_cancel_requested(row.cancel_requested);
  job.set_last_sequence(row.last_seq);
  job.set_tenant(row.tenant);
  pb::Gang gang;
  if (!row.gang.empty() && gang.ParseFromString(row.gang) && gang.workers_size() > 0) {
    *job.mutable_workers() = gang.workers();
  } else if (!row.worker_id.empty()) {
    job.add_workers(row.worker_id);
  }
  return job;
}

absl::Status NoSuchJob(const std::string& job_id) {
  return absl::NotFoundError(absl::StrCat("no job with id ", job_id));
}

absl::Status CheckLeaseHolds(const std::string& job_id, const std::string& lease_id, int64_t state,
                             const std::string& holder) {
  if (state != pb::RUNNING || holder != lease_id || lease_id.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("lease ", lease_id, " no longer holds job ", job_id));
  }
  return absl::OkStatus();
}

std::string NewStoreId(const char* prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrFormat("%s%012x", prefix, rng() & 0xffffffffffffULL);
}

int64_t ToMicros(absl::Time t) { return absl::ToUnixMicros(t); }

void StampEvent(const std::string& job_id, int64_t sequence, absl::Time now, pb::JobEvent* event) {
  event->set_job_id(job_id);
  event->set_sequence(sequence);
  *event->mutable_time() = TimeUtil::MicrosecondsToTimestamp(ToMicros(now));
}

pb::JobEvent StateChangedEvent(pb::JobState state, const std::string& message, int attempt,
                               const std::string& worker_id, const std::string& model_id,
                               const JobStore::ResumePoint& resumed) {
  pb::JobEvent event;
  auto* sc = event.mutable_state_changed();
  sc->set_state(state);
  sc->set_message(message);
  sc->set_attempt(attempt);
  sc->set_worker_id(worker_id);
  sc->set_model_id(model_id);
  sc->set_resumed_epoch(resumed.epoch);
  sc->set_resumed_step(resumed.step);
  return event;
}

pb::Lease NewLease(const std::string& job_id, const std::string& lease_id, absl::Duration ttl, int attempt) {
  pb::Lease lease;
  lease.set_lease_id(lease_id);
  lease.set_job_id(job_id);
  lease.set_ttl_seconds(static_cast<int32_t>(absl::ToInt64Seconds(ttl)));
  lease.set_attempt(attempt);
  return lease;
}

std::string RunningMessage(const pb::WorkerInfo& worker, const JobStore::ResumePoint& resume) {
  std::string message = absl::StrCat("running on ", worker.worker_id(), " (", worker.device(), ")");
  if (resume.epoch > 0) absl::StrAppend(&message, ", resuming at epoch ", resume.epoch, ", step ", resume.step);
  return message;
}

int WorkersNeeded(const pb::ResolvedJob& job) { return std::max(1, job.spec().workers()); }

bool CanJoinGang(const pb::WorkerInfo& worker) { return !worker.c10d_host().empty() && worker.c10d_port() > 0; }

std::string DeviceKind(const pb::WorkerInfo& worker) {
  const std::string& d = worker.device();
  return d.substr(0, d.find(':'));
}

pb::Gang FormGang(const pb::WorkerInfo& leader, const std::vector<std::string>& others) {
  pb::Gang gang;
  gang.set_world_size(static_cast<int32_t>(others.size() + 1));
  gang.add_workers(leader.worker_id());
  for (const std::string& w : others) gang.add_workers(w);
  gang.set_master_address(absl::StrCat(leader.c10d_host(), ":", leader.c10d_port()));
  return gang;
}

pb::Lease RankLease(const std::string& job_id, const std::string& lease_id, absl::Duration ttl, int attempt,
                    int rank, const pb::Gang& gang) {
  pb::Lease lease = NewLease(job_id, lease_id, ttl, attempt);
  lease.set_rank(rank);
  *lease.mutable_gang() = gang;
  return lease;
}

absl::StatusOr<std::optional<LeasedJob>> TakenRank(const std::string& job_id, const std::string& worker_id, int rank,
                                                   int64_t state, const std::string& lease_id, int attempts,
                                                   const std::string& gang_bytes, const std::string& resolved,
                                                   absl::Duration ttl) {
  pb::Gang gang;
  if (state != pb::RUNNING || !gang.ParseFromString(gang_bytes) || rank <= 0 || rank >= gang.workers_size() ||
      gang.workers(rank) != worker_id) {
    return std::optional<LeasedJob>();
  }
  LeasedJob leased;
  FT_ASSIGN_OR_RETURN(leased.job, ParseResolvedJob(job_id, resolved));
  leased.lease = RankLease(job_id, lease_id, ttl, attempts, rank, gang);
  return std::optional<LeasedJob>(std::move(leased));
}

std::string GangRunningMessage(const pb::WorkerInfo& leader, const pb::Gang& gang,
                               const JobStore::ResumePoint& resume) {
  std::string message = absl::StrCat("running on ", gang.world_size(), " workers (", leader.device(), "): ",
                                     absl::StrJoin(gang.workers(), ", "), "; rendezvous at ", gang.master_address());
  if (resume.epoch > 0) absl::StrAppend(&message, ", resuming at epoch ", resume.epoch, ", step ", resume.step);
  return message;
}

std::string FinishedMessage(const pb::JobResult& result) {
  return result.state() == pb::SUCCEEDED   ? "succeeded"
         : result.state() == pb::CANCELLED ? "cancelled"
                                           : result.error();
}

std::string ReturnedMessage(const std::string& worker_id, const std::string& reason) {
  return absl::StrCat("worker ", worker_id, " gave the job back (", reason, "); re-queued to resume");
}

LeaseExpiry ExpireLease(const std::string& worker_id, int attempts, bool cancel_requested, int max_attempts) {
  LeaseExpiry out;
  if (cancel_requested) {
    out.state = pb::CANCELLED;
    out.message = absl::StrCat("cancelled (worker ", worker_id, " stopped answering)");
  } else if (attempts >= max_attempts) {
    out.state = pb::FAILED;
    out.error = absl::StrCat("the job's worker was lost on each of ", attempts, " attempts (last: ", worker_id,
                             "); the job may crash the worker");
    out.message = out.error;
  } else {
    out.message = absl::StrCat("worker ", worker_id, " stopped renewing its lease; re-queued");
  }
  return out;
}

}  // namespace ft::server
