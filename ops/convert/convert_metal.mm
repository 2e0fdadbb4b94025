// Metal backend of the convert family: MPS's own converters between memory and
// MPSImages. Built with ARC. Nothing here has run on a Mac yet: it is type-checked
// against the project's declarations of Apple's API and executed on Linux against the
// Metal emulation (emulation/, docs/metal-emulation.md).
//
// What MPS does on these paths (Apple's MPSImage.h, MPSImageCopy.h, MPSMatrixTypes.h and
// developer.apple.com), and why the rest returns kUnsupported:
//  * WriteImageMetal / ReadImageMetal: -[MPSImage writeBytes:dataLayout:imageIndex:] and
//    -readBytes:dataLayout:imageIndex: (macOS 10.13) copy one whole image on the CPU
//    ("region is full image"). The memory holds W*H*featureChannels values, real
//    channels only, with no padding between channels: [H][W][C] for
//    MPSDataLayoutHeightxWidthxFeatureChannels, [C][H][W] for
//    MPSDataLayoutFeatureChannelsxHeightxWidth.
//    The memory's data type is the texture's pixelFormat: no conversion. The variants
//    with bytesPerRow/region/featureChannelInfo (10.13; bytesPerImage: read 10.13, write
//    10.13.4; bytesPerColumn: write 10.15) are not needed for dense rows, and Apple
//    documents them as buggy before 10.15 when rows are padded or region.size.depth != 1.
//  * ImageToMatrixMetal / MatrixToImageMetal: MPSImageCopyToMatrix (macOS 10.13) and
//    MPSMatrixCopyToImage (10.14) on the GPU. One image per matrix row, from row 0 (the
//    default destinationMatrixOrigin); a row holds W*H*featureChannels elements (real
//    channels only) in the order of dataLayout, which is kMatrixHwc or kMatrixChw
//    exactly. "The destinationMatrix.dataType must match the feature channel data type
//    in sourceImage" (and the reverse): no conversion either. A unorm8 image is paired
//    with MPSDataTypeUnorm8 (Apple does not name the type; to confirm on a Mac). An
//    MPSImage of numberOfImages images fills that many rows, so the image must hold
//    exactly n images here (batchRepresentationWithSubRange: with the encodeBatch
//    variants would lift this).
//  * MPSMatrix over the tensor's own buffer: initWithBuffer:offset:descriptor: (macOS
//    10.15). rowBytes must be a multiple of the element size, which dense rows are;
//    rowBytesForColumns: is only a recommendation. The offset is required 16-byte
//    aligned: Metal wants device-space buffer offsets aligned to the type a kernel reads,
//    up to 16 bytes, and MPS's kernels are not documented.
//  * No value conversion on any path, so the memory dtype must be the image's
//    featureChannelFormat (uint8 <-> unorm8, float16, float32), and scale/bias (and
//    kInverse) are refused: the caller converts on the CPU first (convert.h).
//  * featureChannelFormat is "the true encoding", but readBytes/writeBytes go by the
//    pixelFormat, and GPU reads of sRGB or BGRA textures convert or reorder: only the
//    linear R/RG/RGBA formats of the matching type are accepted.
// For a Mac run to settle: the unorm8 matrix type; and what writeBytes and
// MPSMatrixCopyToImage leave in the padding channels of the last slice (Apple only asks
// that they hold no NaN or Inf; convert.h's kImage promises zeros).
// Coherency: MPSImageDescriptor's default storage on macOS is managed (separate CPU and
// GPU copies on Intel Macs), so MatrixToImageMetal also encodes
// -synchronizeOnCommandBuffer: (nothing for other storage modes). ReadImageMetal and
// WriteImageMetal touch the texture from the CPU at once, so they first wait for the
// GPU work queued before them (and a read synchronizes a managed texture itself rather
// than trusting the last writer to have done it): WaitForGpuWork.
// MPSTemporaryImages (GPU-private) cannot be read or written from the CPU.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "ops/common/metal_context.h"
#include "ops/convert/convert.h"

namespace tfmps {
namespace convert {
namespace {

// ------------------------------------------------------------------ argument mapping
size_t ElementSize(DType t) {
  switch (t) {
    case DType::kUint8: return 1;
    case DType::kFloat16: return 2;
    case DType::kFloat32: break;
  }
  return 4;
}

const char* Name(DType t) {
  switch (t) {
    case DType::kUint8: return "uint8";
    case DType::kFloat16: return "float16";
    case DType::kFloat32: break;
  }
  return "float32";
}

MPSImageFeatureChannelFormat ChannelFormat(DType t) {
  switch (t) {
    case DType::kUint8: return MPSImageFeatureChannelFormatUnorm8;
    case DType::kFloat16: return MPSImageFeatureChannelFormatFloat16;
    case DType::kFloat32: break;
  }
  return MPSImageFeatureChannelFormatFloat32;
}

MPSDataType MatrixType(DType t) {
  switch (t) {
    case DType::kUint8: return MPSDataTypeUnorm8;
    case DType::kFloat16: return MPSDataTypeFloat16;
    case DType::kFloat32: break;
  }
  return MPSDataTypeFloat32;
}

bool LinearFormatOf(MTLPixelFormat f, DType t) {
  switch (t) {
    case DType::kUint8:
      return f == MTLPixelFormatR8Unorm || f == MTLPixelFormatRG8Unorm ||
             f == MTLPixelFormatRGBA8Unorm;
    case DType::kFloat16:
      return f == MTLPixelFormatR16Float || f == MTLPixelFormatRG16Float ||
             f == MTLPixelFormatRGBA16Float;
    case DType::kFloat32: break;
  }
  return f == MTLPixelFormatR32Float || f == MTLPixelFormatRG32Float ||
         f == MTLPixelFormatRGBA32Float;
}

// The MPSDataLayout of one image when `layout` stores each image contiguously. kNhwc,
// kSequence and kMatrixHwc share one index map; kTimeMajor is kSequence when n == 1.
bool PerImageLayout(Layout layout, const Geometry& g, MPSDataLayout* out) {
  switch (layout) {
    case Layout::kTimeMajor:
      if (g.n != 1) return false;
      [[fallthrough]];
    case Layout::kNhwc:
    case Layout::kSequence:
    case Layout::kMatrixHwc:
      *out = MPSDataLayoutHeightxWidthxFeatureChannels;
      return true;
    case Layout::kMatrixChw:
      *out = MPSDataLayoutFeatureChannelsxHeightxWidth;
      return true;
    case Layout::kImage: break;
  }
  return false;
}

// ------------------------------------------------------------------ validation
// What every path checks. args describe the conversion ConvertCpu would do to or from
// kImage memory, with the MPSImage in its place: the image side (dst when writing into
// the image, `to_image`) must say kImage and the image's dtype, and the memory side must
// have the same dtype. On success *layout is the memory side's MPSDataLayout.
BackendStatus Check(const std::string& op, MPSImage* image, const ConvertArgs& args,
                    bool to_image, bool exact_count, MPSDataLayout* layout) {
  if (image == nil) return BackendStatus::Internal(op + ": no MPSImage");
  if (args.scale != nullptr || args.bias != nullptr) {
    return BackendStatus::Unsupported(op + ": scale/bias (MPS copies values unchanged)");
  }
  if (args.affine != Affine::kForward) {
    return BackendStatus::Unsupported(op + ": inverse affine (MPS copies values unchanged)");
  }
  const Layout mem_layout = to_image ? args.src_layout : args.dst_layout;
  const Layout img_layout = to_image ? args.dst_layout : args.src_layout;
  const DType mem_type = to_image ? args.src_type : args.dst_type;
  const DType img_type = to_image ? args.dst_type : args.src_type;
  if (img_layout != Layout::kImage) {
    return BackendStatus::Unsupported(op + ": the image side's layout is not kImage");
  }
  if (mem_type != img_type) {
    return BackendStatus::Unsupported(op + ": " + Name(mem_type) + " memory with a " +
                                      Name(img_type) + " image (MPS converts no values)");
  }
  if ([image featureChannelFormat] != ChannelFormat(img_type) ||
      !LinearFormatOf([image pixelFormat], img_type)) {
    return BackendStatus::Unsupported(op + ": the MPSImage does not store " +
                                      Name(img_type) + " in a linear R/RG/RGBA format");
  }
  if (!PerImageLayout(mem_layout, args.geometry, layout)) {
    return BackendStatus::Unsupported(op + ": no MPSDataLayout stores each image of this "
                                           "memory layout contiguously");
  }
  const Geometry& g = args.geometry;
  const NSUInteger images = [image numberOfImages];
  if (static_cast<int64_t>([image featureChannels]) != g.c ||
      static_cast<int64_t>([image width]) != g.w ||
      static_cast<int64_t>([image height]) != g.h ||
      static_cast<int64_t>(images) < g.n) {
    return BackendStatus::Internal(
        op + ": MPSImage " + std::to_string([image width]) + "x" +
        std::to_string([image height]) + "x" + std::to_string([image featureChannels]) +
        " with " + std::to_string(images) + " images, geometry n=" + std::to_string(g.n) +
        " h=" + std::to_string(g.h) + " w=" + std::to_string(g.w) + " c=" +
        std::to_string(g.c));
  }
  if (exact_count && g.n != 0 && static_cast<int64_t>(images) != g.n) {
    return BackendStatus::Unsupported(op + ": the MPSImage holds " + std::to_string(images) +
                                      " images, and MPS copies all of them; n is " +
                                      std::to_string(g.n));
  }
  return BackendStatus::Ok();
}

size_t ImageBytes(const ConvertArgs& args, DType t) {
  const Geometry& g = args.geometry;
  return static_cast<size_t>(g.h * g.w * g.c) * ElementSize(t);
}

// An n-row matrix of whole images over the registered buffer that holds p. nil if p is
// not in a registered, aligned buffer (*failed stays false: the caller falls back), or
// if MPS returned nil for a valid buffer (*failed: an error).
MPSMatrix* WrapRows(const void* p, const ConvertArgs& args, DType t, bool* failed) {
  const size_t row_bytes = ImageBytes(args, t);
  const size_t rows = static_cast<size_t>(args.geometry.n);
  const metal::BufferRef ref = metal::FindAlignedBuffer(p, rows * row_bytes);
  if (!ref.found()) return nil;
  *failed = true;
  MPSMatrixDescriptor* d =
      [MPSMatrixDescriptor matrixDescriptorWithRows:static_cast<NSUInteger>(rows)
                                            columns:static_cast<NSUInteger>(row_bytes /
                                                                            ElementSize(t))
                                           rowBytes:static_cast<NSUInteger>(row_bytes)
                                           dataType:MatrixType(t)];
  if (d == nil) return nil;
  MPSMatrix* m = [[MPSMatrix alloc] initWithBuffer:metal::BufferOf(ref) offset:ref.offset descriptor:d];
  *failed = m == nil;
  return m;
}

BackendStatus MatrixFailed(const std::string& op) {
  return BackendStatus::Internal(op + ": MPSMatrix initWithBuffer: returned nil");
}

BackendStatus KernelFailed(const std::string& op) {
  return BackendStatus::Internal(op + ": initWithDevice:dataLayout: returned nil");
}

// readBytes/writeBytes touch the image from the CPU at once, so every GPU command queued
// before them must have completed: a GPU write still in flight would be read half done,
// or overwrite what the CPU writes. The one queue runs command buffers in order, so
// waiting for a new one is waiting for all of them; before a read it also carries
// -synchronizeOnCommandBuffer:, which copies a managed texture's GPU contents to its CPU
// copy (macOS's default storage for textures, on Intel and external GPUs; nothing for
// shared or private storage). Without a device there is no GPU work to wait for.
BackendStatus WaitForGpuWork(const std::string& op, MPSImage* image, bool synchronize) {
  if (!metal::Available()) return BackendStatus::Ok();
  return metal::SubmitAndWait(op, [&](id<MTLCommandBuffer> cb) {
    if (synchronize) [image synchronizeOnCommandBuffer:cb];
  });
}

BackendStatus NotInBuffer(const std::string& op) {
  return BackendStatus::Unsupported(op + ": the matrix is not in a 16-byte aligned, "
                                         "registered Metal buffer");
}

}  // namespace

// ----------------------------------------------------------------- CPU copies
BackendStatus WriteImageMetal(void* image_ptr, const ConvertArgs& args) {
  const std::string op = "MPSImage writeBytes";
  @autoreleasepool {
    MPSImage* image = (__bridge MPSImage*)image_ptr;
    MPSDataLayout layout;
    BackendStatus s = Check(op, image, args, /*to_image=*/true, /*exact_count=*/false, &layout);
    if (!s.ok()) return s;
    s = WaitForGpuWork(op, image, /*synchronize=*/false);
    if (!s.ok()) return s;
    const size_t bytes = ImageBytes(args, args.src_type);
    const auto* src = static_cast<const uint8_t*>(args.src);
    for (int64_t i = 0; i < args.geometry.n; ++i) {
      [image writeBytes:src + static_cast<size_t>(i) * bytes
             dataLayout:layout
             imageIndex:static_cast<NSUInteger>(i)];
    }
    return BackendStatus::Ok();
  }
}

BackendStatus ReadImageMetal(void* image_ptr, const ConvertArgs& args) {
  const std::string op = "MPSImage readBytes";
  @autoreleasepool {
    MPSImage* image = (__bridge MPSImage*)image_ptr;
    MPSDataLayout layout;
    BackendStatus s = Check(op, image, args, /*to_image=*/false, /*exact_count=*/false, &layout);
    if (!s.ok()) return s;
    s = WaitForGpuWork(op, image, /*synchronize=*/true);
    if (!s.ok()) return s;
    const size_t bytes = ImageBytes(args, args.dst_type);
    auto* dst = static_cast<uint8_t*>(args.dst);
    for (int64_t i = 0; i < args.geometry.n; ++i) {
      [image readBytes:dst + static_cast<size_t>(i) * bytes
            dataLayout:layout
            imageIndex:static_cast<NSUInteger>(i)];
    }
    return BackendStatus::Ok();
  }
}

// ----------------------------------------------------------------- GPU copies
BackendStatus ImageToMatrixMetal(void* image_ptr, const ConvertArgs& args) {
  const std::string op = "MPSImageCopyToMatrix";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  @autoreleasepool {
    MPSImage* image = (__bridge MPSImage*)image_ptr;
    MPSDataLayout layout;
    BackendStatus s = Check(op, image, args, /*to_image=*/false, /*exact_count=*/true, &layout);
    if (!s.ok()) return s;
    if (args.geometry.n == 0) return BackendStatus::Ok();
    bool failed = false;
    MPSMatrix* matrix = WrapRows(args.dst, args, args.dst_type, &failed);
    if (matrix == nil) return failed ? MatrixFailed(op) : NotInBuffer(op);
    MPSImageCopyToMatrix* copy = [[MPSImageCopyToMatrix alloc] initWithDevice:metal::Device()
                                                                   dataLayout:layout];
    if (copy == nil) return KernelFailed(op);
    return metal::SubmitAndWait(op, [&](id<MTLCommandBuffer> cb) {
      [copy encodeToCommandBuffer:cb sourceImage:image destinationMatrix:matrix];
    });
  }
}

BackendStatus MatrixToImageMetal(void* image_ptr, const ConvertArgs& args) {
  const std::string op = "MPSMatrixCopyToImage";
  if (!metal::Available()) return BackendStatus::Unsupported(op + ": no Metal device");
  @autoreleasepool {
    MPSImage* image = (__bridge MPSImage*)image_ptr;
    MPSDataLayout layout;
    BackendStatus s = Check(op, image, args, /*to_image=*/true, /*exact_count=*/true, &layout);
    if (!s.ok()) return s;
    if (args.geometry.n == 0) return BackendStatus::Ok();
    bool failed = false;
    MPSMatrix* matrix = WrapRows(args.src, args, args.src_type, &failed);
    if (matrix == nil) return failed ? MatrixFailed(op) : NotInBuffer(op);
    MPSMatrixCopyToImage* copy = [[MPSMatrixCopyToImage alloc] initWithDevice:metal::Device()
                                                                   dataLayout:layout];
    if (copy == nil) return KernelFailed(op);
    return metal::SubmitAndWait(op, [&](id<MTLCommandBuffer> cb) {
      [copy encodeToCommandBuffer:cb sourceMatrix:matrix destinationImage:image];
      [image synchronizeOnCommandBuffer:cb];
    });
  }
}

}  // namespace convert
}  // namespace tfmps
