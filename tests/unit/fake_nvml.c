/* A fake libnvidia-ml for device_memory_test only: the NVML functions that
 * worker/agent/device_memory.cc loads, with the public nvml.h signatures, over
 * four fixed GPUs and one MIG device. GPU i uses (i + 1) GiB of 80 GiB;
 * reading GPU 3 fails with NVML_ERROR_GPU_IS_LOST. Built a second time with
 * FAKE_NVML_NO_MEMORY_INFO, without nvmlDeviceGetMemoryInfo. */
#include <stdio.h>
#include <string.h>

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_GPU_IS_LOST 15

#define GIB (1024ULL * 1024ULL * 1024ULL)

typedef int nvmlReturn_t;

struct nvmlDevice_st {
  const char* uuid;
  unsigned long long used;
  unsigned long long total;
  nvmlReturn_t memory_error;
};
typedef struct nvmlDevice_st* nvmlDevice_t;

typedef struct nvmlMemory_st {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
} nvmlMemory_t;

enum { kGpus = 4 };
/* kGpus GPUs that the index functions see, then a MIG device found only by UUID. */
static struct nvmlDevice_st devices[kGpus + 1] = {
    {"GPU-aaaa0000-1111-2222-3333-444444444444", 1 * GIB, 80 * GIB, NVML_SUCCESS},
    {"GPU-bbbb0000-1111-2222-3333-444444444444", 2 * GIB, 80 * GIB, NVML_SUCCESS},
    {"GPU-cccc0000-1111-2222-3333-444444444444", 3 * GIB, 80 * GIB, NVML_SUCCESS},
    {"GPU-dddd0000-1111-2222-3333-444444444444", 4 * GIB, 80 * GIB, NVML_ERROR_GPU_IS_LOST},
    {"MIG-eeee0000-1111-2222-3333-444444444444", 7 * GIB, 10 * GIB, NVML_SUCCESS},
};

/* nvmlInit_v2 calls not yet matched by nvmlShutdown; the test reads it. */
static int initialized = 0;

int fake_nvml_initialized(void) { return initialized; }

nvmlReturn_t nvmlInit_v2(void) {
  ++initialized;
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void) {
  if (initialized == 0) return NVML_ERROR_UNINITIALIZED;
  --initialized;
  return NVML_SUCCESS;
}

const char* nvmlErrorString(nvmlReturn_t result) {
  switch (result) {
    case NVML_SUCCESS:
      return "Success";
    case NVML_ERROR_UNINITIALIZED:
      return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
      return "Invalid Argument";
    case NVML_ERROR_NOT_FOUND:
      return "Not Found";
    case NVML_ERROR_GPU_IS_LOST:
      return "GPU is lost";
    default:
      return "Unknown Error";
  }
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int* count) {
  if (initialized == 0) return NVML_ERROR_UNINITIALIZED;
  if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  *count = kGpus;
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t* device) {
  if (initialized == 0) return NVML_ERROR_UNINITIALIZED;
  if (index >= kGpus || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  *device = &devices[index];
  return NVML_SUCCESS;
}

/* Whole UUIDs only, as the real NVML. */
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char* uuid, nvmlDevice_t* device) {
  if (initialized == 0) return NVML_ERROR_UNINITIALIZED;
  if (uuid == NULL || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  for (int i = 0; i <= kGpus; ++i) {
    if (strcmp(uuid, devices[i].uuid) == 0) {
      *device = &devices[i];
      return NVML_SUCCESS;
    }
  }
  return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char* uuid, unsigned int length) {
  if (initialized == 0) return NVML_ERROR_UNINITIALIZED;
  if (device == NULL || uuid == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (strlen(device->uuid) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  snprintf(uuid, length, "%s", device->uuid);
  return NVML_SUCCESS;
}

#ifndef FAKE_NVML_NO_MEMORY_INFO
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t* memory) {
  if (initialized == 0) return NVML_ERROR_UNINITIALIZED;
  if (device == NULL || memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (device->memory_error != NVML_SUCCESS) return device->memory_error;
  memory->total = device->total;
  memory->used = device->used;
  memory->free = device->total - device->used;
  return NVML_SUCCESS;
}
#endif
