#include "ops/common/tf_glue.h"
#ifdef TFMPS_DEVICE_KERNELS
#include "ops/device/device_kernels_glue.h"
#endif

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <thread>

#include "tensorflow/core/framework/resource_mgr.h"

namespace tfmps {
namespace tfglue {

using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::Var;

// Below this many estimated cycles of work a ParallelFor runs inline (~30 us).
constexpr int64_t kInlineCycles = 100000;
// Chunks per thread of the shared range: enough that a pool thread that wakes late
// leaves its share to the caller, few enough that claiming one costs nothing.
constexpr int64_t kChunksPerThread = 8;

namespace {
// A range that the caller and the pool tasks claim in chunks from one counter. A task
// that starts after every chunk has been claimed touches only this (shared) state, never
// `fn`, so the caller returns as soon as every claimed chunk is done.
struct SharedRange {
  std::atomic<int64_t> next{0}, done{0};
  int64_t total = 0, chunk = 1, chunks = 0;
  const std::function<void(int64_t, int64_t)>* fn = nullptr;

  void Run() {
    for (;;) {
      const int64_t k = next.fetch_add(1, std::memory_order_relaxed);
      if (k >= chunks) return;
      (*fn)(k * chunk, std::min(total, (k + 1) * chunk));
      done.fetch_add(1, std::memory_order_release);
    }
  }
};
}  // namespace

ParallelFor CpuParallelFor(OpKernelContext* ctx) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return [workers](int64_t total, int64_t cost, const std::function<void(int64_t, int64_t)>& fn) {
    if (total <= 0) return;
    const int64_t threads = std::max(1, workers->NumThreads());
    const int64_t work = total * std::max<int64_t>(cost, 1);
    // Small jobs run on the calling thread: waking a pool thread costs more.
    if (total == 1 || threads == 1 || work < kInlineCycles) {
      fn(0, total);
      return;
    }
    // Work sharing rather than Eigen's cost-model split: that made about 9 futex calls
    // per op and cost 0.15-0.2 ms of each 1 ms conversion here (2 cores). One task per
    // other pool thread; the caller works too, and takes over the chunks of a thread
    // that wakes late.
    // As many threads as the work pays for (kInlineCycles each), at most the pool's.
    const int64_t used = std::min(threads, std::max<int64_t>(2, work / kInlineCycles));
    auto range = std::make_shared<SharedRange>();
    range->total = total;
    range->chunks = std::min(total, used * kChunksPerThread);
    range->chunk = (total + range->chunks - 1) / range->chunks;
    range->chunks = (total + range->chunk - 1) / range->chunk;
    range->fn = &fn;
    for (int64_t i = 1; i < used; ++i) workers->Schedule([range] { range->Run(); });
    range->Run();
    // Every chunk is claimed; wait for those still running on pool threads.
    for (int spins = 0; range->done.load(std::memory_order_acquire) < range->chunks;) {
      if (spins < 64) {
        ++spins;
      } else {
        std::this_thread::yield();
      }
    }
  };
}

LockedVariables::~LockedVariables() {
  for (auto it = locked_.rbegin(); it != locked_.rend(); ++it) (*it)->unlock();
}

absl::Status LockedVariables::Acquire(OpKernelContext* ctx, const std::vector<ArgGroup>& groups,
                                      tensorflow::DataType dtype) {
  const std::string op = ctx->op_kernel().type_string();
  std::map<const Var*, std::pair<int, int>> seen;  // variable -> (group, entry) naming it first
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const ArgGroup& g = groups[gi];
    offsets_.push_back(static_cast<int>(vars_.size()));
    for (int i = 0; i < g.count; ++i) {
      const int index = g.Index(i);
      if (ctx->input_dtype(index) != tensorflow::DT_RESOURCE) {
        return absl::InvalidArgumentError(
            absl::StrCat(op, ": ", g.Label(i), " must be a resource variable handle, got ",
                         tensorflow::DataTypeString(ctx->input_dtype(index))));
      }
      // HandleFromInput reads element 0: a list of handles, or none, is not a variable.
      if (!tensorflow::TensorShapeUtils::IsScalar(ctx->input(index).shape())) {
        return absl::InvalidArgumentError(
            absl::StrCat(op, ": ", g.Label(i), " must be one resource variable handle (a scalar), got shape ",
                         ctx->input(index).shape().DebugString()));
      }
      tensorflow::core::RefCountPtr<Var> var;
      absl::Status s = tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, index), &var);
      if (!s.ok()) {
        // Keep TensorFlow's status code (NotFound, FailedPrecondition, InvalidArgument for
        // a resource of another type), as its own ops do; name the argument.
        return absl::Status(s.code(), absl::StrCat(op, ": ", g.Label(i),
                                                   " does not refer to a live resource variable (deleted, "
                                                   "never initialized, or not a variable): ",
                                                   s.message()));
      }
      auto [it, inserted] = seen.emplace(var.get(), std::make_pair(static_cast<int>(gi), i));
      if (!inserted) {
        const auto [first_group, first_entry] = it->second;
        return absl::InvalidArgumentError(absl::StrCat(
            op, ": ", groups[first_group].Label(first_entry), " and ", g.Label(i),
            " are the same variable; every variable and optimizer slot must be distinct"));
      }
      vars_.push_back(std::move(var));
    }
  }
  // Lock in address order (deadlock-free against any other op doing the same).
  std::vector<tsl::mutex*> mus;
  mus.reserve(vars_.size());
  for (auto& v : vars_) mus.push_back(v->mu());
  std::sort(mus.begin(), mus.end());
  for (tsl::mutex* mu : mus) {
    mu->lock();
    locked_.push_back(mu);
  }
  int gi = 0;
  for (const ArgGroup& g : groups) {
    for (int i = 0; i < g.count; ++i) {
      Var* var = vars_[offsets_[gi] + i].get();
      if (!var->is_initialized) {
        return absl::FailedPreconditionError(absl::StrCat(
            op, ": ", g.Label(i), " is not initialized (assign it a value before updating it)"));
      }
      Tensor* t = var->tensor();
      if (t->dtype() != dtype) {
        return absl::InvalidArgumentError(absl::StrCat(
            op, ": ", g.Label(i), " holds ", tensorflow::DataTypeString(t->dtype()),
            " but the gradients are ", tensorflow::DataTypeString(dtype),
            "; variables, slots and gradients must share one dtype"));
      }
      // Copy-on-write, as TensorFlow's training ops do: never update a buffer that a
      // reader (or copy-on-read mode) still shares.
      if (var->copy_on_read_mode.load() || !t->RefCountIsOne()) {
        Tensor copy;
        tsl::AllocatorAttributes attr;
        attr.set_gpu_compatible(true);
        attr.set_nic_compatible(true);
        TF_RETURN_IF_ERROR(ctx->allocate_temp(t->dtype(), t->shape(), &copy, attr));
#ifdef TFMPS_DEVICE_KERNELS
        // On the tf-mps device: in stream order, after the queued kernels that write t.
        TF_RETURN_IF_ERROR(device_glue::CopyInStream(ctx, t->data(), copy.data(), t->TotalBytes()));
#else
        if (t->TotalBytes() > 0) {
          std::memcpy(copy.data(), t->data(), t->TotalBytes());
        }
#endif
        *t = copy;
      }
    }
    ++gi;
  }
  return absl::OkStatus();
}

absl::Status CheckSameShape(const OpKernelContext* ctx, const ArgGroup& a, const ArgGroup& b, int i,
                            const tensorflow::TensorShape& shape, const tensorflow::TensorShape& other) {
  if (shape == other) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      ctx->op_kernel().type_string(), ": ", a.Label(i), " and ", b.Label(i),
      " do not have the same shape: ", shape.DebugString(), " vs ", other.DebugString()));
}

absl::Status MergeHandleShapes(tensorflow::shape_inference::InferenceContext* c, const std::string& op,
                               const std::vector<std::pair<int, std::string>>& handles, int dense,
                               const std::string& dense_label) {
  tensorflow::shape_inference::ShapeHandle s = c->input(dense);
  // What `s` is named by in a message: the first handle with shape data (the variable),
  // the dense input until then.
  const std::string* ref = nullptr;
  for (const auto& [h, label] : handles) {
    auto* data = c->input_handle_shapes_and_types(h);
    if (data == nullptr || data->empty()) continue;
    tensorflow::shape_inference::ShapeHandle merged;
    absl::Status st = c->Merge(s, (*data)[0].shape, &merged);
    if (!st.ok()) {
      // In the kernel's order: the variable first, then the slot or the gradient.
      const bool first = ref == nullptr;
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": ", first ? label : *ref, " and ", first ? dense_label : label,
          " do not have the same shape: ", c->DebugString(first ? (*data)[0].shape : s), " vs ",
          c->DebugString(first ? c->input(dense) : (*data)[0].shape)));
    }
    if (ref == nullptr) ref = &label;
    s = merged;
  }
  return absl::OkStatus();
}

}  // namespace tfglue
}  // namespace tfmps
