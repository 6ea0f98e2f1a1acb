#include "worker/train/checkpoint.h"

#include <cstring>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/util/sha256.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace ft::worker {
namespace {

// LibTorch's messages carry a backtrace after the first line.
std::string FirstLine(const c10::Error& e) {
  std::string what = e.what_without_backtrace();
  const size_t newline = what.find('\n');
  return newline == std::string::npos ? what : what.substr(0, newline);
}

std::string DeterministicBytes(const google::protobuf::MessageLite& message) {
  std::string out;
  google::protobuf::io::StringOutputStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  message.SerializeToCodedStream(&coded);
  coded.Trim();
  return out;
}

absl::StatusOr<CheckpointInfo> ReadHeader(torch::serialize::InputArchive& archive) {
  CheckpointInfo info;
  c10::IValue v;
  if (!archive.try_read("format", v) || !v.isInt()) {
    return absl::DataLossError("the checkpoint does not parse: it has no format version");
  }
  info.format = v.toInt();
  if (info.format != kCheckpointFormat) {
    return absl::FailedPreconditionError(absl::StrCat("the checkpoint is in format ", info.format,
                                                      "; this worker reads format ", kCheckpointFormat));
  }
  c10::IValue fingerprint, epoch, step, epoch_end;
  if (!archive.try_read("fingerprint", fingerprint) || !fingerprint.isString() ||
      !archive.try_read("position/epoch", epoch) || !epoch.isInt() || !archive.try_read("position/step", step) ||
      !step.isInt() || !archive.try_read("position/epoch_end", epoch_end) || !epoch_end.isInt()) {
    return absl::DataLossError("the checkpoint does not parse: its header is incomplete");
  }
  info.fingerprint = fingerprint.toStringRef();
  info.position.epoch = static_cast<int>(epoch.toInt());
  info.position.step = step.toInt();
  info.position.epoch_end = epoch_end.toInt() != 0;
  return info;
}

absl::Status Parse(const std::string& bytes, torch::Device device, torch::serialize::InputArchive* archive) {
  if (bytes.empty()) return absl::DataLossError("the checkpoint does not parse: it is empty");
  try {
    archive->load_from(bytes.data(), bytes.size(), device);
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat("the checkpoint does not parse (", bytes.size(),
                                            " bytes; truncated or damaged?): LibTorch: ", FirstLine(e)));
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("the checkpoint does not parse (", bytes.size(), " bytes): ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace

std::string TrainingFingerprint(const std::string& job_id, const pb::JobSpec& spec,
                                const std::vector<std::string>& classes, const std::vector<int64_t>& train_labels,
                                const std::vector<int64_t>& val_labels) {
  pb::JobSpec trained = spec;
  trained.clear_checkpoint_interval_seconds();
  util::Sha256 h;
  auto add = [&h](absl::string_view part) {
    // Length-prefixed, so that no two different inputs hash alike.
    h.Update(absl::StrCat(part.size(), ":"));
    h.Update(part);
  };
  add(absl::StrCat("finetune checkpoint format ", kCheckpointFormat));
  add(job_id);
  add(DeterministicBytes(trained));
  add(absl::StrCat(classes.size()));
  for (const auto& c : classes) add(c);
  for (const auto* labels : {&train_labels, &val_labels}) {
    add(absl::StrCat(labels->size()));
    h.Update(absl::string_view(reinterpret_cast<const char*>(labels->data()), labels->size() * sizeof(int64_t)));
  }
  return h.HexDigest();
}

absl::StatusOr<CheckpointInfo> InspectCheckpoint(const std::string& bytes) {
  torch::serialize::InputArchive archive;
  if (absl::Status s = Parse(bytes, torch::kCPU, &archive); !s.ok()) return s;
  try {
    return ReadHeader(archive);
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat("the checkpoint does not parse: LibTorch: ", FirstLine(e)));
  }
}

CheckpointWriter::CheckpointWriter(const std::string& fingerprint, const CheckpointPosition& position) {
  Int("format", kCheckpointFormat);
  Text("fingerprint", fingerprint);
  Int("position/epoch", position.epoch);
  Int("position/step", position.step);
  Int("position/epoch_end", position.epoch_end ? 1 : 0);
}

void CheckpointWriter::Int(const std::string& key, int64_t value) { archive_.write(key, c10::IValue(value)); }

void CheckpointWriter::Double(const std::string& key, double value) { archive_.write(key, c10::IValue(value)); }

void CheckpointWriter::Text(const std::string& key, const std::string& value) {
  archive_.write(key, c10::IValue(value));
}

void CheckpointWriter::Bytes(const std::string& key, const std::string& value) {
  torch::Tensor t = torch::empty({static_cast<int64_t>(value.size())}, torch::kUInt8);
  if (!value.empty()) std::memcpy(t.data_ptr<uint8_t>(), value.data(), value.size());
  archive_.write(key, t, /*is_buffer=*/true);
}

void CheckpointWriter::Tensors(const std::string& key, const std::vector<torch::Tensor>& tensors) {
  Int(key + "/size", static_cast<int64_t>(tensors.size()));
  for (size_t i = 0; i < tensors.size(); ++i) {
    archive_.write(absl::StrCat(key, "/", i), tensors[i].detach(), /*is_buffer=*/true);
  }
}

std::string CheckpointWriter::Finish() {
  std::string out;
  archive_.save_to([&out](const void* data, size_t size) {
    out.append(static_cast<const char*>(data), size);
    return size;
  });
  return out;
}

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& bytes,
                                                                         const std::string& fingerprint,
                                                                         torch::Device device) {
  std::unique_ptr<CheckpointReader> reader(new CheckpointReader());
  if (absl::Status s = Parse(bytes, device, &reader->archive_); !s.ok()) return s;
  try {
    auto info = ReadHeader(reader->archive_);
    if (!info.ok()) return info.status();
    reader->info_ = *std::move(info);
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat("the checkpoint does not parse: LibTorch: ", FirstLine(e)));
  }
  if (reader->info_.fingerprint != fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the checkpoint is of another job, spec or dataset (its fingerprint ", reader->info_.fingerprint.substr(0, 12),
        ", this job's ", fingerprint.substr(0, 12), "): refusing to resume from it"));
  }
  return reader;
}

int64_t CheckpointReader::Int(const std::string& key) {
  c10::IValue v;
  archive_.read(key, v);
  return v.toInt();
}

double CheckpointReader::Double(const std::string& key) {
  c10::IValue v;
  archive_.read(key, v);
  return v.toDouble();
}

std::string CheckpointReader::Text(const std::string& key) {
  c10::IValue v;
  archive_.read(key, v);
  return v.toStringRef();
}

std::string CheckpointReader::Bytes(const std::string& key) {
  torch::Tensor t;
  archive_.read(key, t, /*is_buffer=*/true);
  t = t.to(torch::kCPU).contiguous();
  TORCH_CHECK(t.scalar_type() == torch::kUInt8 && t.dim() == 1, "checkpoint key ", key, " is not bytes");
  return std::string(reinterpret_cast<const char*>(t.data_ptr<uint8_t>()), static_cast<size_t>(t.numel()));
}

std::vector<torch::Tensor> CheckpointReader::Tensors(const std::string& key) {
  const int64_t size = Int(key + "/size");
  std::vector<torch::Tensor> out(static_cast<size_t>(size));
  for (int64_t i = 0; i < size; ++i) archive_.read(absl::StrCat(key, "/", i), out[static_cast<size_t>(i)], true);
  return out;
}

bool CheckpointReader::Has(const std::string& key) {
  c10::IValue v;
  return archive_.try_read(key, v);
}

}  // namespace ft::worker
