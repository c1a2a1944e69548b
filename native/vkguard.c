// vkguard: a Vulkan loader shim that keeps host timeline-semaphore signals in order.
//
// Why (docs/FINDINGS.md, "lavapipe DEVICE_LOST: the root cause"): IREE 3.13's Vulkan queue wakes
// its completion thread by signalling a timeline semaphore from the host, from whichever thread
// made a deferred submission ready (iree_hal_vulkan_queue_signal_wakeup, queue.c:2856): the value
// comes from an atomic fetch_add, but the vkSignalSemaphore calls themselves are not ordered, so
// thread A can signal N+1 after thread B has signalled N+2. The spec forbids signalling a value
// not above the current one (VUID-VkSemaphoreSignalInfo-value-03258); Mesa's emulated timelines
// (lavapipe 22.x and other drivers without kernel timelines) answer with a lost device ("Timeline
// values must only ever strictly increase."), which then fails the next call or module load.
// Measured: every such signal was followed by a lost device, one for one.
//
// The shim stands in front of the real loader: IREE loads it by
// --vulkan_libvulkan_search_path=<this .so> (build_sd sets that flag when BUILD_SD_VKGUARD names
// the file) and takes every Vulkan entry point through its vkGetInstanceProcAddr. Everything is
// the real loader's, except vkSignalSemaphore: under one mutex it reads the semaphore's value and
// drops a signal at or below it. A timeline only moves up and waiters wait for ">= value", so the
// higher signal that came first has already released everyone the dropped one would have.
//
// Built by `make` (cc -shared); no Vulkan headers needed: the few types are declared here.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int32_t VkResult;
typedef void* VkInstance;
typedef void* VkDevice;
typedef uint64_t VkSemaphore;  // a non-dispatchable handle
typedef void (*PFN_vkVoidFunction)(void);
typedef struct {
  int32_t sType;
  const void* pNext;
  VkSemaphore semaphore;
  uint64_t value;
} VkSemaphoreSignalInfo;
typedef PFN_vkVoidFunction (*PFN_gipa)(VkInstance, const char*);
typedef PFN_vkVoidFunction (*PFN_gdpa)(VkDevice, const char*);
typedef VkResult (*PFN_signal)(VkDevice, const VkSemaphoreSignalInfo*);
typedef VkResult (*PFN_value)(VkDevice, VkSemaphore, uint64_t*);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static PFN_gipa real_gipa;
static PFN_gdpa real_gdpa;
static PFN_signal real_signal;  // the loader's trampolines: they dispatch on the device
static PFN_value real_value;
static pthread_mutex_t signal_mutex = PTHREAD_MUTEX_INITIALIZER;
static unsigned long signals, dropped;
static int verbose;

static void load_real_loader(void) {
  // this file's soname differs from libvulkan.so.1, so this finds the system loader, not us
  void* lib = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "vkguard: cannot load the Vulkan loader: %s\n", dlerror());
    return;
  }
  real_gipa = (PFN_gipa)dlsym(lib, "vkGetInstanceProcAddr");
  real_gdpa = (PFN_gdpa)dlsym(lib, "vkGetDeviceProcAddr");
  real_signal = (PFN_signal)dlsym(lib, "vkSignalSemaphore");
  real_value = (PFN_value)dlsym(lib, "vkGetSemaphoreCounterValue");
  const char* v = getenv("BUILD_SD_VKGUARD_VERBOSE");
  verbose = v && *v && strcmp(v, "0") != 0;
}

__attribute__((destructor)) static void report(void) {
  if (verbose) fprintf(stderr, "vkguard: %lu host signals, %lu out of order dropped\n", signals, dropped);
}

static VkResult guarded_signal(VkDevice device, const VkSemaphoreSignalInfo* info) {
  pthread_mutex_lock(&signal_mutex);
  uint64_t current = 0;
  VkResult result = real_value(device, info->semaphore, &current);
  ++signals;
  if (result == 0 && info->value <= current) {
    ++dropped;
    if (verbose)
      fprintf(stderr, "vkguard: dropped a host signal of %llu at %llu\n",
              (unsigned long long)info->value, (unsigned long long)current);
  } else {
    result = real_signal(device, info);  // also when the value could not be read: say what the driver says
  }
  pthread_mutex_unlock(&signal_mutex);
  return result;
}

static PFN_vkVoidFunction guarded_gdpa(VkDevice device, const char* name);

static PFN_vkVoidFunction choose(const char* name, PFN_vkVoidFunction real) {
  if (!real) return real;
  if (!strcmp(name, "vkSignalSemaphore") || !strcmp(name, "vkSignalSemaphoreKHR"))
    return real_signal && real_value ? (PFN_vkVoidFunction)guarded_signal : real;
  if (!strcmp(name, "vkGetDeviceProcAddr")) return (PFN_vkVoidFunction)guarded_gdpa;
  return real;
}

static PFN_vkVoidFunction guarded_gdpa(VkDevice device, const char* name) {
  return choose(name, real_gdpa(device, name));
}

__attribute__((visibility("default"))) PFN_vkVoidFunction vkGetInstanceProcAddr(VkInstance instance,
                                                                                const char* name) {
  pthread_once(&once, load_real_loader);
  return real_gipa ? choose(name, real_gipa(instance, name)) : NULL;
}
