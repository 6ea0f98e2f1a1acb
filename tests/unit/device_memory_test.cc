#include "worker/agent/device_memory.h"

#include <dlfcn.h>

#include <cstdint>
#include <initializer_list>
#include <iostream>
#include <optional>
#include <string>
#include <utility>

#include "gtest/gtest.h"

namespace ft::worker {
namespace {

// Built by tests/unit/CMakeLists.txt: see fake_nvml.c for its devices.
constexpr char kFakeNvml[] = FAKE_NVML;
constexpr char kFakeNvmlWithoutMemoryInfo[] = FAKE_NVML_NO_MEMORY_INFO;
constexpr uint64_t kGiB = 1024ULL * 1024 * 1024;
constexpr char kGpu1Uuid[] = "GPU-bbbb0000-1111-2222-3333-444444444444";
constexpr char kMigUuid[] = "MIG-eeee0000-1111-2222-3333-444444444444";

DeviceMemoryOptions Options(const std::string& device, std::optional<std::string> visible = std::nullopt) {
  DeviceMemoryOptions options;
  options.device = device;
  options.nvml_library = kFakeNvml;
  options.cuda_visible_devices = std::move(visible);
  return options;
}

// Used bytes that `device` reads under CUDA_VISIBLE_DEVICES=`visible`.
uint64_t UsedBytes(const std::string& device, std::optional<std::string> visible = std::nullopt) {
  auto memory = DeviceMemory::Create(Options(device, std::move(visible)));
  EXPECT_TRUE(memory.ok()) << memory.status();
  if (!memory.ok() || *memory == nullptr) return 0;
  auto usage = (*memory)->Read();
  EXPECT_TRUE(usage.ok()) << usage.status();
  return usage.ok() ? usage->used_bytes : 0;
}

// nvmlInit_v2 calls in the fake that no nvmlShutdown has matched yet.
int FakeNvmlInitialized() {
  void* library = dlopen(kFakeNvml, RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) return -1;
  auto initialized = reinterpret_cast<int (*)()>(dlsym(library, "fake_nvml_initialized"));
  const int count = initialized != nullptr ? initialized() : -1;
  dlclose(library);
  return count;
}

TEST(DeviceMemoryTest, CpuLoadsNothing) {
  DeviceMemoryOptions options = Options("cpu");
  options.nvml_library = "/nonexistent/libnvidia-ml.so.1";
  auto memory = DeviceMemory::Create(options);
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_EQ(*memory, nullptr);
}

TEST(DeviceMemoryTest, BadDeviceString) {
  for (const std::string device : {"", "gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda:1x", "CUDA:0"}) {
    auto memory = DeviceMemory::Create(Options(device));
    ASSERT_FALSE(memory.ok()) << device;
    EXPECT_EQ(memory.status().code(), absl::StatusCode::kInvalidArgument) << memory.status();
    EXPECT_NE(memory.status().message().find("\"" + device + "\""), std::string::npos) << memory.status();
  }
}

TEST(DeviceMemoryTest, MissingLibrary) {
  DeviceMemoryOptions options = Options("cuda:0");
  options.nvml_library = "/nonexistent/libnvidia-ml.so.1";
  auto memory = DeviceMemory::Create(options);
  ASSERT_FALSE(memory.ok());
  EXPECT_EQ(memory.status().code(), absl::StatusCode::kUnavailable) << memory.status();
  EXPECT_NE(memory.status().message().find("/nonexistent/libnvidia-ml.so.1"), std::string::npos) << memory.status();
}

TEST(DeviceMemoryTest, MissingFunction) {
  DeviceMemoryOptions options = Options("cuda:0");
  options.nvml_library = kFakeNvmlWithoutMemoryInfo;
  auto memory = DeviceMemory::Create(options);
  ASSERT_FALSE(memory.ok());
  EXPECT_EQ(memory.status().code(), absl::StatusCode::kUnimplemented) << memory.status();
  EXPECT_NE(memory.status().message().find("nvmlDeviceGetMemoryInfo"), std::string::npos) << memory.status();
}

TEST(DeviceMemoryTest, ReadsUsedAndTotalBytes) {
  auto memory = DeviceMemory::Create(Options("cuda:1"));
  ASSERT_TRUE(memory.ok()) << memory.status();
  ASSERT_NE(*memory, nullptr);
  auto usage = (*memory)->Read();
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_EQ(usage->used_bytes, 2 * kGiB);
  EXPECT_EQ(usage->total_bytes, 80 * kGiB);
  EXPECT_EQ((*memory)->description(), "cuda:1 is NVML device 1 (CUDA_VISIBLE_DEVICES unset)");
}

TEST(DeviceMemoryTest, CudaIndexIsNvmlIndexWithoutCudaVisibleDevices) {
  EXPECT_EQ(UsedBytes("cuda"), 1 * kGiB);
  EXPECT_EQ(UsedBytes("cuda:0"), 1 * kGiB);
  EXPECT_EQ(UsedBytes("cuda:2"), 3 * kGiB);
}

TEST(DeviceMemoryTest, NumbersInCudaVisibleDevices) {
  EXPECT_EQ(UsedBytes("cuda:0", "2,0"), 3 * kGiB);
  EXPECT_EQ(UsedBytes("cuda:1", "2,0"), 1 * kGiB);
  EXPECT_EQ(UsedBytes("cuda", "1"), 2 * kGiB);
  EXPECT_EQ(UsedBytes("cuda:1", " 0 , 2 "), 3 * kGiB);
  auto memory = DeviceMemory::Create(Options("cuda:1", "2,0"));
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_EQ((*memory)->description(), "cuda:1 is NVML device 0 (CUDA_VISIBLE_DEVICES entry 1: 0)");
}

TEST(DeviceMemoryTest, UuidsInCudaVisibleDevices) {
  EXPECT_EQ(UsedBytes("cuda:0", kGpu1Uuid), 2 * kGiB);
  EXPECT_EQ(UsedBytes("cuda:1", std::string("0,") + kGpu1Uuid), 2 * kGiB);
  EXPECT_EQ(UsedBytes("cuda:0", kMigUuid), 7 * kGiB);
  // CUDA takes a unique prefix of a GPU UUID; NVML needs it whole.
  EXPECT_EQ(UsedBytes("cuda:1", std::string(kGpu1Uuid) + ",GPU-cccc"), 3 * kGiB);
  auto memory = DeviceMemory::Create(Options("cuda:0", "GPU-cccc"));
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_EQ((*memory)->description(),
            "cuda:0 is NVML device GPU-cccc0000-1111-2222-3333-444444444444 (CUDA_VISIBLE_DEVICES entry 0: "
            "GPU-cccc)");
}

TEST(DeviceMemoryTest, DeviceNotVisible) {
  struct Case {
    std::string device, visible, message;
  };
  for (const Case& c :
       {Case{"cuda:2", "0,1", "lists 2 device(s)"}, Case{"cuda:0", "", "hides every GPU"},
        Case{"cuda:2", "0,-1,1", "(\"-1\") is neither"}, Case{"cuda:1", "0,-1,1", "(\"-1\") is neither"},
        Case{"cuda:0", "nvidia0", "(\"nvidia0\") is neither"}}) {
    auto memory = DeviceMemory::Create(Options(c.device, c.visible));
    ASSERT_FALSE(memory.ok()) << c.device << " " << c.visible;
    EXPECT_EQ(memory.status().code(), absl::StatusCode::kNotFound) << memory.status();
    EXPECT_NE(memory.status().message().find(c.message), std::string::npos) << memory.status();
  }
}

TEST(DeviceMemoryTest, NoSuchNvmlDevice) {
  for (const auto& [device, visible] : std::initializer_list<std::pair<std::string, std::optional<std::string>>>{
           {"cuda:4", std::nullopt},
           {"cuda:0", "9"},
           {"cuda:0", "GPU-ffff"},
           {"cuda:0", "GPU-"},
           {"cuda:0", "MIG-ffff0000-1111-2222-3333-444444444444"}}) {
    auto memory = DeviceMemory::Create(Options(device, visible));
    ASSERT_FALSE(memory.ok()) << device << " " << visible.value_or("unset");
    EXPECT_EQ(memory.status().code(), absl::StatusCode::kNotFound) << memory.status();
  }
}

TEST(DeviceMemoryTest, NvmlErrorIsReportedWithItsText) {
  auto memory = DeviceMemory::Create(Options("cuda:3"));
  ASSERT_FALSE(memory.ok());
  EXPECT_EQ(memory.status().code(), absl::StatusCode::kUnavailable) << memory.status();
  EXPECT_NE(memory.status().message().find("nvmlDeviceGetMemoryInfo"), std::string::npos) << memory.status();
  EXPECT_NE(memory.status().message().find("NVML error 15, GPU is lost"), std::string::npos) << memory.status();
}

TEST(DeviceMemoryTest, ShutsNvmlDownWhenDestroyedOrFailing) {
  ASSERT_EQ(FakeNvmlInitialized(), 0);
  {
    auto memory = DeviceMemory::Create(Options("cuda:0"));
    ASSERT_TRUE(memory.ok()) << memory.status();
    EXPECT_EQ(FakeNvmlInitialized(), 1);
  }
  EXPECT_EQ(FakeNvmlInitialized(), 0);
  EXPECT_FALSE(DeviceMemory::Create(Options("cuda:3")).ok());
  EXPECT_EQ(FakeNvmlInitialized(), 0);
}

// On a machine with an NVIDIA driver: the real NVML, through the same ABI.
TEST(DeviceMemoryTest, RealNvmlWhenPresent) {
  DeviceMemoryOptions options;
  options.device = "cuda:0";
  options.cuda_visible_devices = CudaVisibleDevicesFromEnvironment();
  auto memory = DeviceMemory::Create(options);
  if (!memory.ok()) GTEST_SKIP() << "no usable NVML here: " << memory.status();
  auto usage = (*memory)->Read();
  ASSERT_TRUE(usage.ok()) << usage.status();
  std::cout << (*memory)->description() << ": " << usage->used_bytes << " of " << usage->total_bytes << " bytes used"
            << std::endl;
  EXPECT_GT(usage->total_bytes, 0u);
  EXPECT_LE(usage->used_bytes, usage->total_bytes);
}

}  // namespace
}  // namespace ft::worker
