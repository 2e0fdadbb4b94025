// The tf-mps device's Metal implementations of standard TensorFlow ops (device_ops.h):
// MatMul on MPSMatrixMultiplication, the rest on tf-mps's own kernels
// (device_kernels.metal), encoded into the calling thread's stream. Built with ARC.
#import <Metal/Metal.h>
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "ops/common/metal_context.h"
#include "ops/device/device_kernels.h"
#include "ops/device/device_ops.h"

namespace tfmps {
namespace device_ops {
namespace {

struct Bound {
  id<MTLBuffer> buffer;
  NSUInteger offset;
};

// A buffer of `bytes` at p (at least 1 byte, so that an empty input still binds).
bool Find(const void* p, size_t bytes, Bound* out) {
  const metal::BufferRef ref = metal::FindAlignedBuffer(p, std::max<size_t>(bytes, 1));
  if (!ref.found()) return false;
  *out = Bound{metal::BufferOf(ref), static_cast<NSUInteger>(ref.offset)};
  return true;
}

BackendStatus NotInBuffer(const char* op) {
  return BackendStatus::Unsupported(std::string(op) + ": a tensor is not in a 16-byte aligned, registered Metal buffer");
}

bool TooBig(int64_t n) { return n > static_cast<int64_t>(UINT32_MAX); }

BackendStatus TooBigStatus(const char* op) {
  return BackendStatus::Unsupported(std::string(op) + ": more than 2^32 - 1 elements (32-bit kernel indices)");
}

// Runs `kernel` of device_kernels.metal over `threads` threads: buffers in parameter
// order, then the arguments struct by setBytes:.
template <typename Args>
BackendStatus Dispatch(const char* op, const char* kernel, const std::vector<Bound>& bufs, const Args& args,
                       int64_t threads) {
  if (threads == 0) return BackendStatus::Ok();
  std::string error;
  id<MTLComputePipelineState> pipeline =
      metal::KernelPipeline("device_kernels.metal", kDeviceKernelsSource, kernel, &error);
  if (pipeline == nil) return BackendStatus::Internal(std::string(op) + ": " + error);
  return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
    id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
    [enc setComputePipelineState:pipeline];
    for (size_t i = 0; i < bufs.size(); ++i) [enc setBuffer:bufs[i].buffer offset:bufs[i].offset atIndex:i];
    [enc setBytes:&args length:sizeof(Args) atIndex:bufs.size()];
    const NSUInteger group = std::min<NSUInteger>([pipeline maxTotalThreadsPerThreadgroup], 256);
    [enc dispatchThreads:MTLSizeMake(static_cast<NSUInteger>(threads), 1, 1)
        threadsPerThreadgroup:MTLSizeMake(group, 1, 1)];
    [enc endEncoding];
  });
}

std::string Kernel(const char* base, Elem t) { return std::string(base) + (t == Elem::kF16 ? "_f16" : "_f32"); }

MPSMatrix* Wrap(Elem t, const void* p, int64_t rows, int64_t cols, bool* failed) {
  const size_t e = ElemBytes(t);
  Bound b;
  if (!Find(p, static_cast<size_t>(rows * cols) * e, &b)) return nil;
  MPSMatrixDescriptor* d =
      [MPSMatrixDescriptor matrixDescriptorWithRows:static_cast<NSUInteger>(rows)
                                            columns:static_cast<NSUInteger>(cols)
                                           rowBytes:static_cast<NSUInteger>(cols) * e
                                           dataType:t == Elem::kF16 ? MPSDataTypeFloat16 : MPSDataTypeFloat32];
  MPSMatrix* m = [[MPSMatrix alloc] initWithBuffer:b.buffer offset:b.offset descriptor:d];
  if (m == nil) *failed = true;
  return m;
}

}  // namespace

BackendStatus MatMul(Elem t, const void* a, const void* b, void* c, int64_t m, int64_t n, int64_t k,
                     bool transpose_a, bool transpose_b) {
  const char* op = "MatMul (MPSMatrixMultiplication)";
  if (m == 0 || n == 0) return BackendStatus::Ok();
  if (k == 0) return Fill(t, c, 0.0f, m * n);  // MPS wants matrices with elements
  @autoreleasepool {
    bool failed = false;
    MPSMatrix* left = transpose_a ? Wrap(t, a, k, m, &failed) : Wrap(t, a, m, k, &failed);
    MPSMatrix* right = transpose_b ? Wrap(t, b, n, k, &failed) : Wrap(t, b, k, n, &failed);
    MPSMatrix* result = Wrap(t, c, m, n, &failed);
    if (failed) return BackendStatus::Internal(std::string(op) + ": MPSMatrix init failed");
    if (left == nil || right == nil || result == nil) return NotInBuffer(op);
    MPSMatrixMultiplication* mm =
        [[MPSMatrixMultiplication alloc] initWithDevice:metal::Device()
                                          transposeLeft:transpose_a ? YES : NO
                                         transposeRight:transpose_b ? YES : NO
                                             resultRows:static_cast<NSUInteger>(m)
                                          resultColumns:static_cast<NSUInteger>(n)
                                        interiorColumns:static_cast<NSUInteger>(k)
                                                  alpha:1.0
                                                   beta:0.0];
    if (mm == nil) return BackendStatus::Internal(std::string(op) + ": init failed");
    return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      [mm encodeToCommandBuffer:cb leftMatrix:left rightMatrix:right resultMatrix:result];
    });
  }
}

BackendStatus Unary(int op_code, Elem t, const void* x, void* y, int64_t n) {
  const char* op = "tf-mps unary kernel";
  if (TooBig(n)) return TooBigStatus(op);
  @autoreleasepool {
    Bound bx, by;
    const size_t bytes = n * ElemBytes(t);
    if (!Find(x, bytes, &bx) || !Find(y, bytes, &by)) return NotInBuffer(op);
    TfmpsEltwiseArgs a{};
    a.n = static_cast<tfmps_u32>(n);
    a.op = static_cast<tfmps_u32>(op_code);
    return Dispatch(op, Kernel("tfmps_unary", t).c_str(), {bx, by}, a, n);
  }
}

BackendStatus Binary(int op_code, Elem t, const void* x, const void* y, void* z, const Broadcast& b) {
  const char* op = "tf-mps binary kernel";
  if (TooBig(b.out_size) || TooBig(b.x_size) || TooBig(b.y_size)) return TooBigStatus(op);
  if (b.rank > TFMPS_MAX_DIMS) return BackendStatus::Unsupported(std::string(op) + ": too many dims");
  @autoreleasepool {
    const size_t e = ElemBytes(t);
    Bound bx, by, bz;
    if (!Find(x, b.x_size * e, &bx) || !Find(y, b.y_size * e, &by) || !Find(z, b.out_size * e, &bz)) {
      return NotInBuffer(op);
    }
    TfmpsEltwiseArgs a{};
    a.n = static_cast<tfmps_u32>(b.out_size);
    a.op = static_cast<tfmps_u32>(op_code);
    a.rank = static_cast<tfmps_u32>(b.rank);
    for (int d = 0; d < b.rank; ++d) {
      a.dims[d] = static_cast<tfmps_u32>(b.dims[d]);
      a.xs[d] = static_cast<tfmps_u32>(b.x_strides[d]);
      a.ys[d] = static_cast<tfmps_u32>(b.y_strides[d]);
    }
    return Dispatch(op, Kernel("tfmps_binary", t).c_str(), {bx, by, bz}, a, b.out_size);
  }
}

BackendStatus Fill(Elem t, void* y, float value, int64_t n) {
  const char* op = "tf-mps fill kernel";
  if (TooBig(n)) return TooBigStatus(op);
  @autoreleasepool {
    Bound by;
    if (!Find(y, n * ElemBytes(t), &by)) return NotInBuffer(op);
    TfmpsEltwiseArgs a{};
    a.n = static_cast<tfmps_u32>(n);
    a.value = value;
    return Dispatch(op, Kernel("tfmps_fill", t).c_str(), {by}, a, n);
  }
}

BackendStatus ReduceSum(Elem t, const void* x, void* y, int64_t outer, int64_t reduce, int64_t inner,
                        float divisor) {
  const char* op = "tf-mps reduce kernel";
  if (TooBig(outer * reduce * inner) || TooBig(outer * inner)) return TooBigStatus(op);
  @autoreleasepool {
    const size_t e = ElemBytes(t);
    Bound bx, by;
    if (!Find(x, outer * reduce * inner * e, &bx) || !Find(y, outer * inner * e, &by)) return NotInBuffer(op);
    TfmpsReduceArgs a{};
    a.outer = static_cast<tfmps_u32>(outer);
    a.reduce = static_cast<tfmps_u32>(reduce);
    a.inner = static_cast<tfmps_u32>(inner);
    a.divisor = divisor;
    return Dispatch(op, Kernel("tfmps_reduce_sum", t).c_str(), {bx, by}, a, outer * inner);
  }
}

BackendStatus Softmax(Elem t, const void* x, void* y, int64_t rows, int64_t cols, bool log) {
  const char* op = "tf-mps softmax kernel";
  if (TooBig(rows * cols)) return TooBigStatus(op);
  if (cols == 0) return BackendStatus::Ok();
  @autoreleasepool {
    const size_t bytes = rows * cols * ElemBytes(t);
    Bound bx, by;
    if (!Find(x, bytes, &bx) || !Find(y, bytes, &by)) return NotInBuffer(op);
    TfmpsRowsArgs a{};
    a.rows = static_cast<tfmps_u32>(rows);
    a.cols = static_cast<tfmps_u32>(cols);
    a.log = log ? 1 : 0;
    return Dispatch(op, Kernel("tfmps_softmax", t).c_str(), {bx, by}, a, rows);
  }
}

BackendStatus SparseSoftmaxXent(const float* logits, const void* labels, int label_bytes, float* loss,
                                float* backprop, int64_t rows, int64_t cols) {
  const char* op = "tf-mps sparse softmax cross entropy kernel";
  if (TooBig(rows * cols)) return TooBigStatus(op);
  if (cols == 0) return BackendStatus::Unsupported(std::string(op) + ": no classes");
  @autoreleasepool {
    Bound bx, bl, bloss, bbp;
    if (!Find(logits, rows * cols * sizeof(float), &bx) || !Find(labels, rows * label_bytes, &bl) ||
        !Find(loss, rows * sizeof(float), &bloss) || !Find(backprop, rows * cols * sizeof(float), &bbp)) {
      return NotInBuffer(op);
    }
    TfmpsRowsArgs a{};
    a.rows = static_cast<tfmps_u32>(rows);
    a.cols = static_cast<tfmps_u32>(cols);
    return Dispatch(op, label_bytes == 8 ? "tfmps_sparse_xent_i64_f32" : "tfmps_sparse_xent_i32_f32",
                    {bx, bl, bloss, bbp}, a, rows);
  }
}

BackendStatus Cast(const char* kernel, const void* x, size_t x_bytes, void* y, size_t y_bytes, int64_t n) {
  const char* op = "tf-mps cast kernel";
  if (TooBig(n)) return TooBigStatus(op);
  @autoreleasepool {
    Bound bx, by;
    if (!Find(x, x_bytes, &bx) || !Find(y, y_bytes, &by)) return NotInBuffer(op);
    TfmpsEltwiseArgs a{};
    a.n = static_cast<tfmps_u32>(n);
    return Dispatch(op, kernel, {bx, by}, a, n);
  }
}

namespace {
// Host-memory indices in a buffer of their own (fresh memory: no GPU work uses it yet).
bool UploadIndices(const int32_t* indices, int64_t count, Bound* out) {
  id<MTLBuffer> b = [metal::Device() newBufferWithBytes:indices
                                                 length:static_cast<NSUInteger>(std::max<int64_t>(count, 1)) * 4
                                                options:MTLResourceStorageModeShared];
  if (b == nil) return false;
  *out = Bound{b, 0};
  return true;
}
}  // namespace

BackendStatus Gather(const float* params, int64_t params_rows, const int32_t* indices, int64_t count, int64_t row,
                     float* out) {
  const char* op = "tf-mps gather kernel";
  if (TooBig(count * row) || TooBig(params_rows * row)) return TooBigStatus(op);
  @autoreleasepool {
    Bound bp, bi, bo;
    if (!Find(params, params_rows * row * sizeof(float), &bp) || !Find(out, count * row * sizeof(float), &bo)) {
      return NotInBuffer(op);
    }
    if (!UploadIndices(indices, count, &bi)) return BackendStatus::Internal(std::string(op) + ": no index buffer");
    TfmpsIndexedArgs a{};
    a.count = static_cast<tfmps_u32>(count);
    a.row = static_cast<tfmps_u32>(row);
    return Dispatch(op, "tfmps_gather_f32", {bp, bi, bo}, a, count * row);
  }
}

BackendStatus Scatter(int op_code, float* var, int64_t var_rows, const int32_t* indices, int64_t count, int64_t row,
                      const float* updates, bool scalar_update) {
  const char* op = "tf-mps scatter kernel";
  if (TooBig(count * row) || TooBig(var_rows * row)) return TooBigStatus(op);
  @autoreleasepool {
    Bound bv, bi, bu;
    if (!Find(var, var_rows * row * sizeof(float), &bv) ||
        !Find(updates, (scalar_update ? 1 : count * row) * sizeof(float), &bu)) {
      return NotInBuffer(op);
    }
    if (!UploadIndices(indices, count, &bi)) return BackendStatus::Internal(std::string(op) + ": no index buffer");
    TfmpsIndexedArgs a{};
    a.count = static_cast<tfmps_u32>(count);
    a.row = static_cast<tfmps_u32>(row);
    a.op = static_cast<tfmps_u32>(op_code);
    a.scalar = scalar_update ? 1 : 0;
    return Dispatch(op, "tfmps_scatter_f32", {bv, bi, bu}, a, row);
  }
}

BackendStatus Copy(const void* src, void* dst, size_t bytes) {
  const char* op = "tf-mps copy";
  if (bytes == 0) return BackendStatus::Ok();
  @autoreleasepool {
    const metal::BufferRef s = metal::FindBuffer(src, bytes), d = metal::FindBuffer(dst, bytes);
    if (!s.found() || !d.found()) return NotInBuffer(op);
    id<MTLBuffer> sb = metal::BufferOf(s), db = metal::BufferOf(d);
    if (bytes % 4 != 0 || s.offset % 4 != 0 || d.offset % 4 != 0) {
      // A blit on macOS takes multiples of 4 only (the emulation checks it as Metal does).
      if (TooBig(static_cast<int64_t>(bytes))) return TooBigStatus(op);
      TfmpsEltwiseArgs a{};
      a.n = static_cast<tfmps_u32>(bytes);
      return Dispatch(op, "tfmps_copy_bytes", {Bound{sb, s.offset}, Bound{db, d.offset}}, a,
                      static_cast<int64_t>(bytes));
    }
    return metal::Submit(op, [&](id<MTLCommandBuffer> cb) {
      id<MTLBlitCommandEncoder> blit = [cb blitCommandEncoder];
      [blit copyFromBuffer:sb sourceOffset:s.offset toBuffer:db destinationOffset:d.offset size:bytes];
      [blit endEncoding];
    });
  }
}

}  // namespace device_ops
}  // namespace tfmps
