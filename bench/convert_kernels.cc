// The converter kernels timed without TensorFlow: ConvertCpu on the cases of
// bench/convert.py (and a few more), against memcpy of the same bytes, both split over
// two threads (the caller and one spinning worker, so no wake-up cost is measured).
// Rounds interleave memcpy and the kernel; the ratio printed is the median over rounds
// of memcpy time / kernel time. For trying kernel changes: the TF path adds its own
// per-call costs (bench/convert.py measures those), and this leaves them out.
//
// Build (not built by default):
//   cmake -S . -B build/micro -G Ninja -DTFMPS_MICROBENCH=ON
//   cmake --build build/micro --target convert_kernels -j2
// Run:
//   build/micro/convert_kernels [--scale 1] [--only SUBSTRING]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "ops/convert/convert.h"

namespace {

using tfmps::convert::ConvertArgs;
using tfmps::convert::ConvertCpu;
using tfmps::convert::DType;
using tfmps::convert::Geometry;
using tfmps::convert::Layout;

// One worker that spins between jobs: the caller runs the first half of a range, the
// worker the second.
class SpinningWorker {
 public:
  SpinningWorker() : thread_([this] { Loop(); }) {}
  ~SpinningWorker() {
    generation_.store(-1, std::memory_order_release);
    thread_.join();
  }
  void Run(const std::function<void()>& theirs, const std::function<void()>& mine) {
    job_ = &theirs;
    const int64_t g = ++issued_;
    generation_.store(g, std::memory_order_release);
    mine();
    while (done_.load(std::memory_order_acquire) != g) std::this_thread::yield();
  }

 private:
  void Loop() {
    int64_t seen = 0;
    for (;;) {
      int64_t g;
      while ((g = generation_.load(std::memory_order_acquire)) == seen) {
      }
      if (g < 0) return;
      seen = g;
      (*job_)();
      done_.store(g, std::memory_order_release);
    }
  }
  std::atomic<int64_t> generation_{0}, done_{0};
  int64_t issued_ = 0;
  const std::function<void()>* job_ = nullptr;
  std::thread thread_;
};

SpinningWorker& Worker() {
  static SpinningWorker worker;
  return worker;
}

void TwoThreads(int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t mid = total / 2;
  Worker().Run([&] { fn(mid, total); }, [&] { fn(0, mid); });
}

template <typename F>
double SecondsPerCall(F& f, int calls) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / calls;
}

struct Case {
  const char* name;
  Geometry g;
  Layout src, dst;
  DType src_type, dst_type;
  bool normalize;
};

int64_t Bytes(DType t) { return t == DType::kUint8 ? 1 : t == DType::kFloat16 ? 2 : 4; }
int64_t Elements(Layout l, const Geometry& g) {
  return l == Layout::kImage ? g.n * g.slices() * 4 * g.h * g.w : g.n * g.h * g.w * g.c;
}

}  // namespace

int main(int argc, char** argv) {
  // OpenBLAS (linked in for the portable build's transposes, unused here) starts a
  // thread per core at load time that spins for a while: 13% of this program's samples
  // under `perf record` on 2 cores. Run again with its pool off before it starts.
  if (std::getenv("OPENBLAS_NUM_THREADS") == nullptr) {
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    execv("/proc/self/exe", argv);
    std::perror("convert_kernels: re-exec with OPENBLAS_NUM_THREADS=1");  // go on as we are
  }
  double scale = 1.0;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: convert_kernels [--scale S] [--only SUBSTRING]\n"
                  "Times ConvertCpu against memcpy of the same bytes (2 threads, medians of 25\n"
                  "interleaved rounds). --scale multiplies the batch sizes (1: 13-46 MB per call).\n");
      return 0;
    } else if (a == "--scale" && i + 1 < argc) {
      scale = std::atof(argv[++i]);
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr, "convert_kernels: unknown argument %s (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (!(scale > 0)) {
    std::fprintf(stderr, "convert_kernels: --scale must be > 0\n");
    return 2;
  }
  auto batch = [&](int64_t n) { return std::max<int64_t>(1, static_cast<int64_t>(n * scale + 0.5)); };
  const Layout kNhwc = Layout::kNhwc, kImage = Layout::kImage, kChw = Layout::kMatrixChw;
  const Layout kSeq = Layout::kSequence, kTm = Layout::kTimeMajor;
  const DType f32 = DType::kFloat32, f16 = DType::kFloat16, u8 = DType::kUint8;
  const std::vector<Case> cases = {
      {"NHWC f32 C=3 -> image", {batch(96), 128, 128, 3}, kNhwc, kImage, f32, f32, false},
      {"image -> NHWC f32 C=3", {batch(96), 128, 128, 3}, kImage, kNhwc, f32, f32, false},
      {"NHWC u8 -> image f16, normalized", {batch(256), 128, 128, 3}, kNhwc, kImage, u8, f16, true},
      {"NHWC f32 C=128 -> CHW", {batch(32), 32, 32, 128}, kNhwc, kChw, f32, f32, false},
      {"NHWC f32 C=128 -> image", {batch(32), 32, 32, 128}, kNhwc, kImage, f32, f32, false},
      {"sequence -> time-major C=64", {batch(256), 256, 1, 64}, kSeq, kTm, f32, f32, false},
      {"image -> NHWC f32 C=128", {batch(32), 32, 32, 128}, kImage, kNhwc, f32, f32, false},
      {"CHW -> NHWC f32 C=128", {batch(32), 32, 32, 128}, kChw, kNhwc, f32, f32, false},
      {"time-major -> sequence C=64", {batch(256), 256, 1, 64}, kTm, kSeq, f32, f32, false},
      {"sequence C=6 -> time-major", {batch(5472), 128, 1, 6}, kSeq, kTm, f32, f32, false},
      // more short rows: the other direction, float16, another row stride and length
      {"time-major C=6 -> sequence", {batch(5472), 128, 1, 6}, kTm, kSeq, f32, f32, false},
      {"sequence C=6 N=5471 T=127 -> TM", {batch(5471), 127, 1, 6}, kSeq, kTm, f32, f32, false},
      {"time-major C=6 N=5471 T=127 -> seq", {batch(5471), 127, 1, 6}, kTm, kSeq, f32, f32, false},
      {"sequence f16 C=6 -> time-major", {batch(10944), 128, 1, 6}, kSeq, kTm, f16, f16, false},
      {"sequence C=3 T=100 -> time-major", {batch(14000), 100, 1, 3}, kSeq, kTm, f32, f32, false},
      {"sequence C=9 T=50 -> time-major", {batch(18666), 50, 1, 9}, kSeq, kTm, f32, f32, false},
      {"sequence C=4 -> time-major", {batch(8192), 128, 1, 4}, kSeq, kTm, f32, f32, false},
      {"sequence C=8 -> time-major", {batch(4096), 128, 1, 8}, kSeq, kTm, f32, f32, false},
      {"time-major C=8 -> sequence", {batch(4096), 128, 1, 8}, kTm, kSeq, f32, f32, false},
  };
  std::printf("%-34s%10s%10s%10s%8s%12s\n", "conversion", "MB in+out", "ms", "memcpy", "ratio", "(IQR)");
  for (const Case& c : cases) {
    if (!only.empty() && std::string(c.name).find(only) == std::string::npos) continue;
    const int64_t in_bytes = Elements(c.src, c.g) * Bytes(c.src_type);
    const int64_t out_bytes = Elements(c.dst, c.g) * Bytes(c.dst_type);
    const int64_t moved = in_bytes + out_bytes, half = moved / 2;
    std::vector<char*> buffers;
    auto alloc = [&](int64_t n, int fill) {
      char* p = static_cast<char*>(std::aligned_alloc(64, (n + 63) / 64 * 64));
      std::memset(p, fill, n);
      buffers.push_back(p);
      return p;
    };
    char* src = alloc(in_bytes, 1);
    char* dst = alloc(out_bytes, 0);
    char* copy_src = alloc(half, 1);
    char* copy_dst = alloc(half, 0);
    const std::vector<float> sc(c.g.c, 1 / 0.226f), bi(c.g.c, -0.45f / 0.226f);
    ConvertArgs a;
    a.geometry = c.g;
    a.src_layout = c.src;
    a.dst_layout = c.dst;
    a.src_type = c.src_type;
    a.dst_type = c.dst_type;
    a.src = src;
    a.dst = dst;
    if (c.normalize) a.scale = sc.data(), a.bias = bi.data();
    auto kernel = [&] { ConvertCpu(a, TwoThreads); };
    auto copy = [&] {
      TwoThreads(2, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) std::memcpy(copy_dst + i * (half / 2), copy_src + i * (half / 2), half / 2);
      });
    };
    kernel();
    copy();
    kernel();
    constexpr int kRounds = 25, kCalls = 5;
    std::vector<double> ratios, times;
    for (int r = 0; r < kRounds; ++r) {
      const double tc = SecondsPerCall(copy, kCalls), tk = SecondsPerCall(kernel, kCalls);
      ratios.push_back(tc / tk);
      times.push_back(tk);
    }
    std::vector<double> copies;
    for (int r = 0; r < kRounds; ++r) copies.push_back(times[r] * ratios[r]);
    std::sort(ratios.begin(), ratios.end());
    std::sort(times.begin(), times.end());
    std::sort(copies.begin(), copies.end());
    char iqr[32];
    std::snprintf(iqr, sizeof(iqr), "%.2f-%.2f", ratios[kRounds / 4], ratios[3 * kRounds / 4]);
    std::printf("%-34s%10.1f%10.3f%10.3f%8.2f%12s\n", c.name, moved / 1e6, times[kRounds / 2] * 1e3,
                copies[kRounds / 2] * 1e3, ratios[kRounds / 2], iqr);
    for (char* p : buffers) std::free(p);
  }
  return 0;
}
