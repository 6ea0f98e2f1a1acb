#include "worker/agent/device_memory.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/util/status.h"

namespace ft::worker {
namespace {

// The few pieces of NVML's public ABI (nvml.h) used here, declared rather
// than included so that building needs nothing from CUDA. nvmlReturn_t is a
// C enum, passed as an int; nvmlDevice_t is an opaque pointer.
using NvmlReturn = int;
struct NvmlDeviceSt;
using NvmlDevice = NvmlDeviceSt*;
// nvmlMemory_t, the v1 struct that nvmlDeviceGetMemoryInfo fills.
struct NvmlMemory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
constexpr NvmlReturn kNvmlSuccess = 0;
constexpr NvmlReturn kNvmlErrorUninitialized = 1;
constexpr NvmlReturn kNvmlErrorInvalidArgument = 2;
constexpr NvmlReturn kNvmlErrorNotSupported = 3;
constexpr NvmlReturn kNvmlErrorNoPermission = 4;
constexpr NvmlReturn kNvmlErrorNotFound = 6;
constexpr NvmlReturn kNvmlErrorDriverNotLoaded = 9;
constexpr NvmlReturn kNvmlErrorTimeout = 10;
constexpr NvmlReturn kNvmlErrorGpuIsLost = 15;
constexpr NvmlReturn kNvmlErrorLibRmVersionMismatch = 18;
// NVML_DEVICE_UUID_V2_BUFFER_SIZE: enough for any nvmlDeviceGetUUID answer.
constexpr unsigned int kNvmlUuidBufferSize = 96;

absl::StatusCode CodeFor(NvmlReturn r) {
  switch (r) {
    case kNvmlErrorInvalidArgument:
      return absl::StatusCode::kInvalidArgument;
    case kNvmlErrorNotSupported:
      return absl::StatusCode::kUnimplemented;
    case kNvmlErrorNoPermission:
      return absl::StatusCode::kPermissionDenied;
    case kNvmlErrorNotFound:
      return absl::StatusCode::kNotFound;
    case kNvmlErrorDriverNotLoaded:
    case kNvmlErrorGpuIsLost:
      return absl::StatusCode::kUnavailable;
    case kNvmlErrorTimeout:
      return absl::StatusCode::kDeadlineExceeded;
    case kNvmlErrorUninitialized:
    case kNvmlErrorLibRmVersionMismatch:
      return absl::StatusCode::kFailedPrecondition;
    default:
      return absl::StatusCode::kUnknown;
  }
}

// "cpu": nullopt; "cuda": 0; "cuda:N": N.
absl::StatusOr<std::optional<int>> CudaIndex(const std::string& device) {
  if (device == "cpu") return std::optional<int>();
  if (device == "cuda") return std::optional<int>(0);
  absl::string_view digits = device;
  int index = 0;
  if (absl::ConsumePrefix(&digits, "cuda:") && !digits.empty() &&
      std::all_of(digits.begin(), digits.end(), [](char c) { return absl::ascii_isdigit(c); }) &&
      absl::SimpleAtoi(digits, &index)) {
    return std::optional<int>(index);
  }
  return absl::InvalidArgumentError(absl::StrCat("device \"", device, "\" is not cpu, cuda or cuda:N"));
}

// The NVML device behind a CUDA index: an NVML index or a UUID (or UUID prefix).
struct NvmlTarget {
  std::optional<unsigned int> index;
  std::string uuid;
  std::string why;  // for DeviceMemory::description()
};

// CUDA_VISIBLE_DEVICES lists integer indices or UUIDs; CUDA ignores the
// first entry that is neither, and every entry after it.
absl::StatusOr<NvmlTarget> TargetFor(int cuda_index, const std::optional<std::string>& visible) {
  NvmlTarget target;
  if (!visible.has_value()) {
    target.index = static_cast<unsigned int>(cuda_index);
    target.why = "CUDA_VISIBLE_DEVICES unset";
    return target;
  }
  const std::string where = absl::StrCat("CUDA_VISIBLE_DEVICES=\"", *visible, "\"");
  if (absl::StripAsciiWhitespace(*visible).empty()) {
    return absl::NotFoundError(absl::StrCat("cuda:", cuda_index, " is not visible: ", where, " hides every GPU"));
  }
  std::vector<absl::string_view> entries = absl::StrSplit(*visible, ',');
  for (int i = 0; i <= cuda_index; ++i) {
    if (i >= static_cast<int>(entries.size())) {
      return absl::NotFoundError(
          absl::StrCat("cuda:", cuda_index, " is not visible: ", where, " lists ", entries.size(), " device(s)"));
    }
    const absl::string_view entry = absl::StripAsciiWhitespace(entries[i]);
    unsigned int index = 0;
    const bool is_index = !entry.empty() &&
                          std::all_of(entry.begin(), entry.end(), [](char c) { return absl::ascii_isdigit(c); }) &&
                          absl::SimpleAtoi(entry, &index);
    const bool is_uuid = absl::StartsWith(entry, "GPU-") || absl::StartsWith(entry, "MIG-");
    if (!is_index && !is_uuid) {
      return absl::NotFoundError(absl::StrCat("cuda:", cuda_index, " is not visible: ", where, " entry ", i, " (\"",
                                              entry, "\") is neither an index nor a UUID, so CUDA ignores it and ",
                                              "the entries after it"));
    }
    if (i == cuda_index) {
      if (is_index) {
        target.index = index;
      } else {
        target.uuid = std::string(entry);
      }
      target.why = absl::StrCat("CUDA_VISIBLE_DEVICES entry ", i, ": ", entry);
    }
  }
  return target;
}

template <typename F>
absl::Status Bind(void* library, const std::string& name, const char* symbol, F* function) {
  // POSIX guarantees that dlsym's void* converts to a function pointer.
  *function = reinterpret_cast<F>(dlsym(library, symbol));
  if (*function == nullptr) {
    return absl::UnimplementedError(absl::StrCat("NVML library ", name, " has no function ", symbol));
  }
  return absl::OkStatus();
}

}  // namespace

struct DeviceMemory::Nvml {
  std::string library;
  NvmlReturn (*init)() = nullptr;  // nvmlInit_v2
  NvmlReturn (*shutdown)() = nullptr;
  const char* (*error_string)(NvmlReturn) = nullptr;                       // may be missing
  NvmlReturn (*get_count)(unsigned int*) = nullptr;                        // nvmlDeviceGetCount_v2
  NvmlReturn (*get_handle_by_index)(unsigned int, NvmlDevice*) = nullptr;  // _v2
  NvmlReturn (*get_handle_by_uuid)(const char*, NvmlDevice*) = nullptr;
  NvmlReturn (*get_uuid)(NvmlDevice, char*, unsigned int) = nullptr;  // may be missing
  NvmlReturn (*get_memory_info)(NvmlDevice, NvmlMemory*) = nullptr;
  bool initialized = false;

  Nvml() = default;
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;
  // NVML counts nvmlInit_v2 calls; each is matched by one nvmlShutdown.
  ~Nvml() {
    if (initialized) shutdown();
  }

  // The library is never dlclose()d: unloading a driver library that may
  // have started threads is not worth one handle per process.
  static absl::StatusOr<std::unique_ptr<Nvml>> Load(const std::string& library) {
    void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* error = dlerror();
      return absl::UnavailableError(
          absl::StrCat("cannot load NVML from ", library, ": ", error != nullptr ? error : "dlopen failed"));
    }
    auto nvml = std::make_unique<Nvml>();
    nvml->library = library;
    FT_RETURN_IF_ERROR(Bind(handle, library, "nvmlInit_v2", &nvml->init));
    FT_RETURN_IF_ERROR(Bind(handle, library, "nvmlShutdown", &nvml->shutdown));
    FT_RETURN_IF_ERROR(Bind(handle, library, "nvmlDeviceGetCount_v2", &nvml->get_count));
    FT_RETURN_IF_ERROR(Bind(handle, library, "nvmlDeviceGetHandleByIndex_v2", &nvml->get_handle_by_index));
    FT_RETURN_IF_ERROR(Bind(handle, library, "nvmlDeviceGetHandleByUUID", &nvml->get_handle_by_uuid));
    FT_RETURN_IF_ERROR(Bind(handle, library, "nvmlDeviceGetMemoryInfo", &nvml->get_memory_info));
    // Optional: without them errors show only their number, and UUID prefixes are not resolved.
    Bind(handle, library, "nvmlErrorString", &nvml->error_string).IgnoreError();
    Bind(handle, library, "nvmlDeviceGetUUID", &nvml->get_uuid).IgnoreError();
    const NvmlReturn r = nvml->init();
    if (r != kNvmlSuccess) return nvml->Error("nvmlInit_v2", r);
    nvml->initialized = true;
    return nvml;
  }

  absl::Status Error(absl::string_view call, NvmlReturn r) const {
    const char* text = error_string != nullptr ? error_string(r) : nullptr;
    return absl::Status(CodeFor(r), absl::StrCat(call, " (", library, "): NVML error ", r,
                                                 text != nullptr ? absl::StrCat(", ", text) : ""));
  }

  absl::StatusOr<unsigned int> Count() const {
    unsigned int count = 0;
    const NvmlReturn r = get_count(&count);
    if (r != kNvmlSuccess) return Error("nvmlDeviceGetCount_v2", r);
    return count;
  }

  absl::StatusOr<NvmlDevice> ByIndex(unsigned int index) const {
    FT_ASSIGN_OR_RETURN(const unsigned int count, Count());
    if (index >= count) {
      return absl::NotFoundError(absl::StrCat("NVML device ", index, " does not exist: NVML sees ", count, " GPU(s)"));
    }
    NvmlDevice device = nullptr;
    const NvmlReturn r = get_handle_by_index(index, &device);
    if (r != kNvmlSuccess) return Error(absl::StrCat("nvmlDeviceGetHandleByIndex_v2(", index, ")"), r);
    return device;
  }

  // CUDA accepts any unique prefix of a GPU UUID; NVML only the whole UUID.
  absl::StatusOr<NvmlDevice> ByUuid(const std::string& uuid, std::string* full_uuid) const {
    NvmlDevice device = nullptr;
    const NvmlReturn r = get_handle_by_uuid(uuid.c_str(), &device);
    *full_uuid = uuid;
    if (r == kNvmlSuccess) return device;
    const bool maybe_prefix = (r == kNvmlErrorNotFound || r == kNvmlErrorInvalidArgument) &&
                              absl::StartsWith(uuid, "GPU-") && get_uuid != nullptr;
    if (!maybe_prefix) return Error(absl::StrCat("nvmlDeviceGetHandleByUUID(", uuid, ")"), r);
    FT_ASSIGN_OR_RETURN(const unsigned int count, Count());
    int matches = 0;
    for (unsigned int i = 0; i < count; ++i) {
      NvmlDevice candidate = nullptr;
      char buffer[kNvmlUuidBufferSize + 1] = {0};  // + 1: terminated whatever NVML writes
      if (get_handle_by_index(i, &candidate) != kNvmlSuccess ||
          get_uuid(candidate, buffer, kNvmlUuidBufferSize) != kNvmlSuccess) {
        continue;
      }
      if (absl::StartsWith(buffer, uuid)) {
        ++matches;
        device = candidate;
        *full_uuid = buffer;
      }
    }
    if (matches != 1) {
      return absl::NotFoundError(
          absl::StrCat("no single NVML device has a UUID starting with ", uuid, " (", matches, " of ", count, " do)"));
    }
    return device;
  }
};

std::optional<std::string> CudaVisibleDevicesFromEnvironment() {
  const char* value = std::getenv("CUDA_VISIBLE_DEVICES");
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

absl::StatusOr<std::unique_ptr<DeviceMemory>> DeviceMemory::Create(const DeviceMemoryOptions& options) {
  FT_ASSIGN_OR_RETURN(const std::optional<int> cuda_index, CudaIndex(options.device));
  if (!cuda_index.has_value()) return std::unique_ptr<DeviceMemory>();
  FT_ASSIGN_OR_RETURN(const NvmlTarget target, TargetFor(*cuda_index, options.cuda_visible_devices));
  FT_ASSIGN_OR_RETURN(std::unique_ptr<Nvml> nvml, Nvml::Load(options.nvml_library));
  NvmlDevice device = nullptr;
  std::string name;
  if (target.index.has_value()) {
    FT_ASSIGN_OR_RETURN(device, nvml->ByIndex(*target.index));
    name = absl::StrCat(*target.index);
  } else {
    FT_ASSIGN_OR_RETURN(device, nvml->ByUuid(target.uuid, &name));
  }
  std::unique_ptr<DeviceMemory> memory(new DeviceMemory(
      std::move(nvml), device, absl::StrCat("cuda:", *cuda_index, " is NVML device ", name, " (", target.why, ")")));
  FT_RETURN_IF_ERROR(memory->Read().status());
  return memory;
}

DeviceMemory::DeviceMemory(std::unique_ptr<Nvml> nvml, void* device, std::string description)
    : nvml_(std::move(nvml)), device_(device), description_(std::move(description)) {}

DeviceMemory::~DeviceMemory() = default;

absl::StatusOr<DeviceMemoryUsage> DeviceMemory::Read() const {
  NvmlMemory memory{};
  const NvmlReturn r = nvml_->get_memory_info(static_cast<NvmlDevice>(device_), &memory);
  if (r != kNvmlSuccess) return nvml_->Error("nvmlDeviceGetMemoryInfo", r);
  DeviceMemoryUsage usage;
  usage.used_bytes = memory.used;
  usage.total_bytes = memory.total;
  return usage;
}

}  // namespace ft::worker
