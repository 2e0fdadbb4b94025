// CPU fakes of the MetalPerformanceShaders classes the project uses, beyond the
// optimizers (mps_optimizers.mm): MPSKernel, vectors, matrices, images, the two
// image <-> matrix converters and MPSMatrixMultiplication. Linux emulation only; built
// with ARC.
//
// Each class computes what Apple documents (MPSImage.h, MPSMatrixTypes.h,
// MPSImageCopy.h, developer.apple.com) and checks the preconditions Apple states,
// aborting with EmuValidationFailure as Metal's validation layer does; conditions Apple
// leaves undefined (overlaps, reads racing GPU writes) are refused too, and the messages
// say that they are the emulation's checks. GPU work runs when the command buffer runs
// (EmuEncode), never at encode time; readBytes/writeBytes run at once on the CPU, as
// Apple documents.
//
// MPSImage model: texture-array storage in the memory order of ops/convert/convert.h's
// kImage, [numberOfImages * ceil(C/4) slices][height][width][4] elements of the channel
// type. MPSImageDescriptor's default storage mode is managed here (Apple: the default
// for textures on Intel Macs), and a managed image has a GPU copy and a CPU copy, as on
// a Mac with a discrete GPU: GPU writes reach the CPU copy (readBytes) only through
// -synchronizeOnCommandBuffer:. On Apple silicon both are one memory, so this is the
// stricter of the two. Fresh storage is undefined (0xFF bytes in the debug mode); the
// writers here (writeBytes, MPSMatrixCopyToImage) zero the padding channels of the last
// slice, since MPS wants finite values there.
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "emulation/metal/metal_emu.h"
#include "emulation/mps/mps_emu.h"
#include "emulation/runtime/objc_emu.h"
#include "ops/common/blas.h"

const char* EmuDataTypeName(MPSDataType t) {
  switch (t) {
    case MPSDataTypeFloat32: return "MPSDataTypeFloat32";
    case MPSDataTypeFloat16: return "MPSDataTypeFloat16";
    case MPSDataTypeUnorm8: return "MPSDataTypeUnorm8";
    default: break;
  }
  return "an MPSDataType the emulation does not implement";
}

namespace {

std::string S(size_t v) { return std::to_string(v); }

// The data type of a matrix that matches an image's feature channels ("The
// destinationMatrix.dataType must match the feature channel data type in sourceImage").
MPSDataType MatrixTypeOf(MPSImageFeatureChannelFormat f) {
  switch (f) {
    case MPSImageFeatureChannelFormatUnorm8: return MPSDataTypeUnorm8;
    case MPSImageFeatureChannelFormatFloat16: return MPSDataTypeFloat16;
    case MPSImageFeatureChannelFormatFloat32: return MPSDataTypeFloat32;
    default: break;
  }
  return static_cast<MPSDataType>(0);
}

size_t ChannelBytes(MPSImageFeatureChannelFormat f) {
  switch (f) {
    case MPSImageFeatureChannelFormatUnorm8: return 1;
    case MPSImageFeatureChannelFormatUnorm16:
    case MPSImageFeatureChannelFormatFloat16: return 2;
    case MPSImageFeatureChannelFormatFloat32: return 4;
    default: break;
  }
  return 0;
}

// The texture format MPS picks: one, two or four components of the channel type
// (there are no three-component formats, so C = 3 and C > 4 use RGBA slices).
MTLPixelFormat PixelFormatOf(MPSImageFeatureChannelFormat f, NSUInteger channels) {
  const int n = channels == 1 ? 1 : channels == 2 ? 2 : 4;
  switch (f) {
    case MPSImageFeatureChannelFormatUnorm8:
      return n == 1 ? MTLPixelFormatR8Unorm : n == 2 ? MTLPixelFormatRG8Unorm : MTLPixelFormatRGBA8Unorm;
    case MPSImageFeatureChannelFormatFloat16:
      return n == 1 ? MTLPixelFormatR16Float : n == 2 ? MTLPixelFormatRG16Float : MTLPixelFormatRGBA16Float;
    case MPSImageFeatureChannelFormatFloat32:
      return n == 1 ? MTLPixelFormatR32Float : n == 2 ? MTLPixelFormatRG32Float : MTLPixelFormatRGBA32Float;
    default: break;
  }
  // Unorm16 formats are outside the stubs (and the project); MPSImage refuses them.
  return MTLPixelFormatInvalid;
}

}  // namespace

EmuByteRange EmuRangeOf(MPSVector* v) {
  const size_t elem = EmuElementSize([v dataType]);
  const size_t bytes = ([v vectors] - 1) * [v vectorBytes] + [v length] * elem;
  return EmuByteRange{[v data], [v offset], [v offset] + bytes};
}

extern "C" BOOL MPSSupportsMTLDevice(id<MTLDevice> device) {
  return device != nil;
}

// ------------------------------------------------------------------------ MPSKernel
@implementation MPSKernel
@synthesize label = _label;

- (instancetype)initEmuWithDevice:(id<MTLDevice>)device {
  if (device == nil) {
    EmuValidationFailure((std::string("-[") + object_getClassName(self) + " initWithDevice:]").c_str(),
                         "device is nil");
  }
  // Apple: every MPS initializer returns nil on failure; the tests make that happen.
  if (EmuInitShouldFail(object_getClassName(self))) return nil;
  self = [super init];
  if (self != nil) _device = device;
  return self;
}

- (instancetype)initWithDevice:(id<MTLDevice>)device {
  return [self initEmuWithDevice:device];
}

- (id<MTLDevice>)device {
  return _device;
}

// Not needed by the project; refused loudly rather than returning a half copy.
- (id)copyWithZone:(NSZone*)zone {
  EmuValidationFailure((std::string("-[") + object_getClassName(self) + " copyWithZone:]").c_str(),
                       "copying MPS kernels is not emulated");
}

@end

// -------------------------------------------------------------- vectors, matrices
@implementation MPSVectorDescriptor {
  NSUInteger _length;
  MPSDataType _dataType;
}

+ (MPSVectorDescriptor*)vectorDescriptorWithLength:(NSUInteger)length dataType:(MPSDataType)dataType {
  MPSVectorDescriptor* d = [[MPSVectorDescriptor alloc] init];
  d->_length = length;
  d->_dataType = dataType;
  return d;
}

- (NSUInteger)length { return _length; }
- (void)setLength:(NSUInteger)length { _length = length; }
- (MPSDataType)dataType { return _dataType; }
- (void)setDataType:(MPSDataType)dataType { _dataType = dataType; }
// One vector (the ...vectors:vectorBytes: factory is not emulated): the stride is the
// vector's size.
- (NSUInteger)vectors { return 1; }
- (NSUInteger)vectorBytes { return _length * EmuElementSize(_dataType); }

@end

@implementation MPSVector {
  id<MTLBuffer> _buffer;
  NSUInteger _offset, _length, _vectors, _vectorBytes;
  MPSDataType _dataType;
}

- (instancetype)initWithBuffer:(id<MTLBuffer>)buffer descriptor:(MPSVectorDescriptor*)descriptor {
  return [self initWithBuffer:buffer offset:0 descriptor:descriptor];
}

// The buffer must hold the vectors from `offset` on; the offset must be aligned to the
// element (Metal's rule for device buffer offsets).
- (instancetype)initWithBuffer:(id<MTLBuffer>)buffer
                        offset:(NSUInteger)offset
                    descriptor:(MPSVectorDescriptor*)descriptor {
  const char* method = "-[MPSVector initWithBuffer:offset:descriptor:]";
  if (buffer == nil) EmuValidationFailure(method, "buffer is nil");
  if (descriptor == nil) EmuValidationFailure(method, "descriptor is nil");
  const size_t elem = EmuElementSize([descriptor dataType]);
  if (elem == 0) EmuValidationFailure(method, "descriptor.dataType is not a valid MPSDataType");
  if ([descriptor length] == 0) EmuValidationFailure(method, "descriptor.length is 0");
  if (offset % elem != 0) {
    EmuValidationFailure(method, "offset " + S(offset) + " is not a multiple of the element size " + S(elem));
  }
  const size_t bytes = ([descriptor vectors] - 1) * [descriptor vectorBytes] + [descriptor length] * elem;
  EmuCheckBufferRange(buffer, offset, bytes, method);
  if (EmuInitShouldFail("MPSVector")) return nil;
  self = [super init];
  if (self == nil) return nil;
  _buffer = buffer;
  _offset = offset;
  _length = [descriptor length];
  _vectors = [descriptor vectors];
  _vectorBytes = [descriptor vectorBytes];
  _dataType = [descriptor dataType];
  return self;
}

- (id<MTLDevice>)device { return [_buffer device]; }
- (NSUInteger)length { return _length; }
- (NSUInteger)vectors { return _vectors; }
- (MPSDataType)dataType { return _dataType; }
- (NSUInteger)vectorBytes { return _vectorBytes; }
- (NSUInteger)offset { return _offset; }
- (id<MTLBuffer>)data { return _buffer; }

@end

@implementation MPSMatrixDescriptor {
  NSUInteger _rows, _columns, _rowBytes;
  NSUInteger _matrices;
  NSUInteger _matrixBytes;  // 0: one matrix, whose stride follows rows * rowBytes
  MPSDataType _dataType;
}

// Apple: rowBytes must be a multiple of the element size; a row must fit in it.
+ (instancetype)matrixDescriptorWithRows:(NSUInteger)rows
                                 columns:(NSUInteger)columns
                                rowBytes:(NSUInteger)rowBytes
                                dataType:(MPSDataType)dataType {
  const char* method = "+[MPSMatrixDescriptor matrixDescriptorWithRows:columns:rowBytes:dataType:]";
  const size_t elem = EmuElementSize(dataType);
  if (elem == 0) EmuValidationFailure(method, "dataType is not a valid MPSDataType");
  if (rowBytes % elem != 0) {
    EmuValidationFailure(method, "rowBytes " + S(rowBytes) + " is not a multiple of the element size " + S(elem));
  }
  if (rowBytes < columns * elem) {
    EmuValidationFailure(method, "rowBytes " + S(rowBytes) + " is less than columns * element size = " +
                                     S(columns * elem));
  }
  MPSMatrixDescriptor* d = [[self alloc] init];
  d->_rows = rows;
  d->_columns = columns;
  d->_rowBytes = rowBytes;
  d->_matrices = 1;
  d->_matrixBytes = 0;
  d->_dataType = dataType;
  return d;
}

// MPSMatrix.h: "matrixBytes ... Must be a multiple of rowBytes", "at least equal to rows *
// rowBytes" (so the matrices of a batch do not overlap).
+ (instancetype)matrixDescriptorWithRows:(NSUInteger)rows
                                 columns:(NSUInteger)columns
                                matrices:(NSUInteger)matrices
                                rowBytes:(NSUInteger)rowBytes
                             matrixBytes:(NSUInteger)matrixBytes
                                dataType:(MPSDataType)dataType {
  const char* method = "+[MPSMatrixDescriptor matrixDescriptorWithRows:columns:matrices:rowBytes:matrixBytes:dataType:]";
  MPSMatrixDescriptor* d = [self matrixDescriptorWithRows:rows columns:columns rowBytes:rowBytes dataType:dataType];
  if (matrices == 0) EmuValidationFailure(method, "matrices is 0");
  if (rowBytes == 0 || matrixBytes % rowBytes != 0 || matrixBytes / rowBytes < rows) {
    EmuValidationFailure(method, "matrixBytes " + S(matrixBytes) + " must be a multiple of rowBytes " + S(rowBytes) +
                                     " and at least rows * rowBytes = " + S(rows * rowBytes));
  }
  d->_matrices = matrices;
  d->_matrixBytes = matrixBytes;
  return d;
}

+ (size_t)rowBytesForColumns:(NSUInteger)columns dataType:(MPSDataType)dataType {
  const size_t bytes = columns * EmuElementSize(dataType);
  return (bytes + 15) / 16 * 16;  // a recommendation only; any multiple of the element works
}

- (NSUInteger)rows { return _rows; }
- (void)setRows:(NSUInteger)rows { _rows = rows; }
- (NSUInteger)columns { return _columns; }
- (void)setColumns:(NSUInteger)columns { _columns = columns; }
- (NSUInteger)matrices { return _matrices; }
- (MPSDataType)dataType { return _dataType; }
- (void)setDataType:(MPSDataType)dataType { _dataType = dataType; }
- (NSUInteger)rowBytes { return _rowBytes; }
- (void)setRowBytes:(NSUInteger)rowBytes { _rowBytes = rowBytes; }
- (NSUInteger)matrixBytes { return _matrixBytes != 0 ? _matrixBytes : _rows * _rowBytes; }

@end

@implementation MPSMatrix {
  id<MTLBuffer> _buffer;
  NSUInteger _offset, _rows, _columns, _matrices, _rowBytes, _matrixBytes;
  MPSDataType _dataType;
}

- (instancetype)initWithBuffer:(id<MTLBuffer>)buffer descriptor:(MPSMatrixDescriptor*)descriptor {
  return [self initWithBuffer:buffer offset:0 descriptor:descriptor];
}

// Apple: the buffer must hold (rows-1)*rowBytes + columns*(element size) bytes (from
// `offset` here, per matrix of the batch).
- (instancetype)initWithBuffer:(id<MTLBuffer>)buffer
                        offset:(NSUInteger)offset
                    descriptor:(MPSMatrixDescriptor*)descriptor {
  const char* method = "-[MPSMatrix initWithBuffer:offset:descriptor:]";
  if (buffer == nil) EmuValidationFailure(method, "buffer is nil");
  if (descriptor == nil) EmuValidationFailure(method, "descriptor is nil");
  const size_t elem = EmuElementSize([descriptor dataType]);
  if (elem == 0) EmuValidationFailure(method, "descriptor.dataType is not a valid MPSDataType");
  const NSUInteger rows = [descriptor rows], columns = [descriptor columns], rowBytes = [descriptor rowBytes];
  if (rows == 0 || columns == 0) {
    EmuValidationFailure(method, "a " + S(rows) + " x " + S(columns) + " matrix has no elements");
  }
  if (rowBytes % elem != 0 || rowBytes < columns * elem) {
    EmuValidationFailure(method, "rowBytes " + S(rowBytes) + " must be a multiple of the element size " + S(elem) +
                                     " and at least columns * element size = " + S(columns * elem));
  }
  if (offset % elem != 0) {
    EmuValidationFailure(method, "offset " + S(offset) + " is not a multiple of the element size " + S(elem));
  }
  // The descriptor's rows and rowBytes may have changed since it was made.
  const NSUInteger matrices = [descriptor matrices], matrixBytes = [descriptor matrixBytes];
  if (matrices == 0) EmuValidationFailure(method, "descriptor.matrices is 0");
  if (matrices > 1 && (matrixBytes % rowBytes != 0 || matrixBytes / rowBytes < rows)) {
    EmuValidationFailure(method, "matrixBytes " + S(matrixBytes) + " must be a multiple of rowBytes " + S(rowBytes) +
                                     " and at least rows * rowBytes = " + S(rows * rowBytes));
  }
  if (matrices > 1 && matrixBytes > (SIZE_MAX - rowBytes * rows) / (matrices - 1)) {
    EmuValidationFailure(method, "the matrices do not fit in the address space");
  }
  const size_t bytes = (matrices - 1) * matrixBytes + (rows - 1) * rowBytes + columns * elem;
  EmuCheckBufferRange(buffer, offset, bytes, method);
  if (EmuInitShouldFail("MPSMatrix")) return nil;
  self = [super init];
  if (self == nil) return nil;
  _buffer = buffer;
  _offset = offset;
  _rows = rows;
  _columns = columns;
  _matrices = [descriptor matrices];
  _rowBytes = rowBytes;
  _matrixBytes = [descriptor matrixBytes];
  _dataType = [descriptor dataType];
  return self;
}

- (id<MTLDevice>)device { return [_buffer device]; }
- (NSUInteger)rows { return _rows; }
- (NSUInteger)columns { return _columns; }
- (NSUInteger)matrices { return _matrices; }
- (MPSDataType)dataType { return _dataType; }
- (NSUInteger)rowBytes { return _rowBytes; }
- (NSUInteger)matrixBytes { return _matrixBytes; }
- (NSUInteger)offset { return _offset; }
- (id<MTLBuffer>)data { return _buffer; }

@end

// ------------------------------------------------------------------------- images
@implementation MPSImageDescriptor {
  NSUInteger _width, _height, _featureChannels, _numberOfImages;
  MPSImageFeatureChannelFormat _channelFormat;
  MTLCPUCacheMode _cpuCacheMode;
  MTLStorageMode _storageMode;
  MTLTextureUsage _usage;
}

// Apple's defaults: 1 x 1 x 1, one image, default cache mode.
- (instancetype)init {
  self = [super init];
  if (self == nil) return nil;
  _width = _height = _featureChannels = _numberOfImages = 1;
  _channelFormat = MPSImageFeatureChannelFormatNone;
  _cpuCacheMode = MTLCPUCacheModeDefaultCache;
  _storageMode = MTLStorageModeManaged;
  _usage = MTLTextureUsageShaderRead | MTLTextureUsageShaderWrite;
  return self;
}

// "Create a MPSImageDescriptor for a single read/write cnn image."
+ (instancetype)imageDescriptorWithChannelFormat:(MPSImageFeatureChannelFormat)channelFormat
                                           width:(NSUInteger)width
                                          height:(NSUInteger)height
                                 featureChannels:(NSUInteger)featureChannels {
  return [self imageDescriptorWithChannelFormat:channelFormat
                                          width:width
                                         height:height
                                featureChannels:featureChannels
                                 numberOfImages:1
                                          usage:MTLTextureUsageShaderRead | MTLTextureUsageShaderWrite];
}

+ (instancetype)imageDescriptorWithChannelFormat:(MPSImageFeatureChannelFormat)channelFormat
                                           width:(NSUInteger)width
                                          height:(NSUInteger)height
                                 featureChannels:(NSUInteger)featureChannels
                                  numberOfImages:(NSUInteger)numberOfImages
                                           usage:(MTLTextureUsage)usage {
  MPSImageDescriptor* d = [[self alloc] init];
  d->_channelFormat = channelFormat;
  d->_width = width;
  d->_height = height;
  d->_featureChannels = featureChannels;
  d->_numberOfImages = numberOfImages;
  d->_usage = usage;
  return d;
}

- (id)copyWithZone:(NSZone*)zone {
  MPSImageDescriptor* d = [[MPSImageDescriptor alloc] init];
  d->_width = _width;
  d->_height = _height;
  d->_featureChannels = _featureChannels;
  d->_numberOfImages = _numberOfImages;
  d->_channelFormat = _channelFormat;
  d->_cpuCacheMode = _cpuCacheMode;
  d->_storageMode = _storageMode;
  d->_usage = _usage;
  return d;
}

- (NSUInteger)width { return _width; }
- (void)setWidth:(NSUInteger)v { _width = v; }
- (NSUInteger)height { return _height; }
- (void)setHeight:(NSUInteger)v { _height = v; }
- (NSUInteger)featureChannels { return _featureChannels; }
- (void)setFeatureChannels:(NSUInteger)v { _featureChannels = v; }
- (NSUInteger)numberOfImages { return _numberOfImages; }
- (void)setNumberOfImages:(NSUInteger)v { _numberOfImages = v; }
- (MTLPixelFormat)pixelFormat { return PixelFormatOf(_channelFormat, _featureChannels); }
- (MPSImageFeatureChannelFormat)channelFormat { return _channelFormat; }
- (void)setChannelFormat:(MPSImageFeatureChannelFormat)v { _channelFormat = v; }
- (MTLCPUCacheMode)cpuCacheMode { return _cpuCacheMode; }
- (void)setCpuCacheMode:(MTLCPUCacheMode)v { _cpuCacheMode = v; }
- (MTLStorageMode)storageMode { return _storageMode; }
- (void)setStorageMode:(MTLStorageMode)v { _storageMode = v; }
- (MTLTextureUsage)usage { return _usage; }
- (void)setUsage:(MTLTextureUsage)v { _usage = v; }

@end

// (MPSImage's emulation-only methods are declared in mps_emu.h.)
@implementation MPSImage {
  id<MTLDevice> _device;
  NSUInteger _width, _height, _featureChannels, _numberOfImages;
  MPSImageFeatureChannelFormat _format;
  MTLStorageMode _storageMode;
  MTLTextureUsage _usage;
  std::vector<uint8_t> _gpu;  // what kernels read and write
  std::vector<uint8_t> _cpu;  // managed storage only: what readBytes sees
  std::atomic<int> _pendingGpuWrites;
}
@synthesize label;

- (instancetype)initWithDevice:(id<MTLDevice>)device imageDescriptor:(MPSImageDescriptor*)imageDescriptor {
  const char* method = "-[MPSImage initWithDevice:imageDescriptor:]";
  if (device == nil) EmuValidationFailure(method, "device is nil");
  if (imageDescriptor == nil) EmuValidationFailure(method, "imageDescriptor is nil");
  MPSImageDescriptor* d = imageDescriptor;
  if ([d width] == 0 || [d height] == 0 || [d featureChannels] == 0 || [d numberOfImages] == 0) {
    EmuValidationFailure(method, "width (" + S([d width]) + "), height (" + S([d height]) + "), featureChannels (" +
                                     S([d featureChannels]) + ") and numberOfImages (" + S([d numberOfImages]) +
                                     ") must all be at least 1");
  }
  if ([d pixelFormat] == MTLPixelFormatInvalid) {
    EmuValidationFailure(method, "channelFormat " + S([d channelFormat]) +
                                     " has no texture format in the emulation (it has unorm8, float16, float32)");
  }
  if ([d storageMode] > MTLStorageModePrivate) EmuValidationFailure(method, "invalid storageMode");
  if (EmuInitShouldFail("MPSImage")) return nil;
  self = [super init];
  if (self == nil) return nil;
  _device = device;
  _width = [d width];
  _height = [d height];
  _featureChannels = [d featureChannels];
  _numberOfImages = [d numberOfImages];
  _format = [d channelFormat];
  _storageMode = [d storageMode];
  _usage = [d usage];
  const size_t bytes = _numberOfImages * [self slices] * _height * _width * 4 * [self elementBytes];
  // Apple allocates the texture lazily and documents no initial contents.
  _gpu.resize(bytes);
  EmuFillUndefined(_gpu.data(), bytes);
  if (_storageMode == MTLStorageModeManaged) _cpu = _gpu;
  _pendingGpuWrites = 0;
  return self;
}

- (id<MTLDevice>)device { return _device; }
- (NSUInteger)width { return _width; }
- (NSUInteger)height { return _height; }
- (NSUInteger)featureChannels { return _featureChannels; }
- (NSUInteger)numberOfImages { return _numberOfImages; }
- (MTLPixelFormat)pixelFormat { return PixelFormatOf(_format, _featureChannels); }
- (MPSImageFeatureChannelFormat)featureChannelFormat { return _format; }
- (MTLTextureUsage)usage { return _usage; }
- (size_t)elementBytes { return ChannelBytes(_format); }
- (NSUInteger)slices { return (_featureChannels + 3) / 4; }  // per image
- (uint8_t*)gpuBytes { return _gpu.data(); }
- (void)beginGpuWrite { ++_pendingGpuWrites; }
- (void)endGpuWrite { --_pendingGpuWrites; }

// The CPU's view: the separate copy for managed storage, the one copy for shared.
- (uint8_t*)cpuBytes:(const char*)method {
  if (_storageMode == MTLStorageModePrivate) {
    EmuValidationFailure(method, "the image's storage is private: the CPU cannot access it");
  }
  return _storageMode == MTLStorageModeManaged ? _cpu.data() : _gpu.data();
}

- (void)checkCpuAccess:(const char*)method
                layout:(MPSDataLayout)layout
            imageIndex:(NSUInteger)imageIndex
                 bytes:(const void*)bytes {
  if (bytes == nullptr) EmuValidationFailure(method, "dataBytes is NULL");
  if (imageIndex >= _numberOfImages) {
    EmuValidationFailure(method, "imageIndex " + S(imageIndex) + " is not less than numberOfImages " +
                                     S(_numberOfImages));
  }
  if (layout != MPSDataLayoutHeightxWidthxFeatureChannels && layout != MPSDataLayoutFeatureChannelsxHeightxWidth) {
    EmuValidationFailure(method, "invalid dataLayout " + S(layout));
  }
  // Not a Metal check: a CPU access while committed-but-unfinished (or encoded) GPU work
  // writes the image is a race whose result Metal leaves undefined.
  if (_pendingGpuWrites.load() != 0) {
    EmuValidationFailure(method, "emulation check: the image is accessed on the CPU while " +
                                     std::to_string(_pendingGpuWrites.load()) +
                                     " encoded GPU command(s) that write it have not completed "
                                     "(wait for their command buffer first)");
  }
}

// Offset, in elements, of (image n, channel c, row h, column w) in kImage order.
- (size_t)indexOfImage:(NSUInteger)n channel:(NSUInteger)c row:(NSUInteger)h column:(NSUInteger)w {
  return (((n * [self slices] + c / 4) * _height + h) * _width + w) * 4 + c % 4;
}

// The memory holds W*H*featureChannels values of the texture's type (no conversion),
// [H][W][C] or [C][H][W]: "region is full image".
- (void)readBytes:(void*)dataBytes dataLayout:(MPSDataLayout)dataLayout imageIndex:(NSUInteger)imageIndex {
  const char* method = "-[MPSImage readBytes:dataLayout:imageIndex:]";
  [self checkCpuAccess:method layout:dataLayout imageIndex:imageIndex bytes:dataBytes];
  const uint8_t* src = [self cpuBytes:method];
  auto* dst = static_cast<uint8_t*>(dataBytes);
  const size_t e = [self elementBytes], C = _featureChannels, H = _height, W = _width;
  for (size_t h = 0; h < H; ++h) {
    for (size_t w = 0; w < W; ++w) {
      for (size_t c = 0; c < C; ++c) {
        const size_t m = dataLayout == MPSDataLayoutHeightxWidthxFeatureChannels ? (h * W + w) * C + c
                                                                                  : (c * H + h) * W + w;
        std::memcpy(dst + m * e, src + [self indexOfImage:imageIndex channel:c row:h column:w] * e, e);
      }
    }
  }
}

- (void)writeImage:(NSUInteger)n into:(uint8_t*)dst from:(const uint8_t*)src layout:(MPSDataLayout)layout {
  const size_t e = [self elementBytes], C = _featureChannels, H = _height, W = _width;
  for (size_t h = 0; h < H; ++h) {
    for (size_t w = 0; w < W; ++w) {
      for (size_t c = 0; c < C; ++c) {
        const size_t m = layout == MPSDataLayoutHeightxWidthxFeatureChannels ? (h * W + w) * C + c
                                                                              : (c * H + h) * W + w;
        std::memcpy(dst + [self indexOfImage:n channel:c row:h column:w] * e, src + m * e, e);
      }
      for (size_t c = C; c % 4 != 0; ++c) {  // padding channels of the last slice
        std::memset(dst + [self indexOfImage:n channel:c row:h column:w] * e, 0, e);
      }
    }
  }
}

// A managed texture written on the CPU is updated for the GPU too (as replaceRegion:
// does), so both copies change.
- (void)writeBytes:(const void*)dataBytes dataLayout:(MPSDataLayout)dataLayout imageIndex:(NSUInteger)imageIndex {
  const char* method = "-[MPSImage writeBytes:dataLayout:imageIndex:]";
  [self checkCpuAccess:method layout:dataLayout imageIndex:imageIndex bytes:dataBytes];
  uint8_t* cpu = [self cpuBytes:method];
  const auto* src = static_cast<const uint8_t*>(dataBytes);
  [self writeImage:imageIndex into:cpu from:src layout:dataLayout];
  if (cpu != _gpu.data()) [self writeImage:imageIndex into:_gpu.data() from:src layout:dataLayout];
}

// Apple: a blit that makes GPU writes visible to the CPU copy of a managed texture;
// nothing for other storage modes.
- (void)synchronizeOnCommandBuffer:(id<MTLCommandBuffer>)commandBuffer {
  if (_storageMode != MTLStorageModeManaged) return;
  MPSImage* image = self;
  // It writes the CPU copy, so CPU access before it has run is a race too.
  [self beginGpuWrite];
  EmuEncode(
      commandBuffer, "-[MPSImage synchronizeOnCommandBuffer:]", [image] { image->_cpu = image->_gpu; },
      [image] { [image endGpuWrite]; });
}

@end

// -------------------------------------------------------- image <-> matrix copies
namespace {

// Checks shared by both directions; returns the matrix row size in elements.
void CheckCopy(const char* method, MPSKernel* kernel, id<MTLCommandBuffer> cb, MPSImage* image,
               MPSMatrix* matrix, MTLOrigin origin, NSUInteger batchIndex) {
  if (cb == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if (image == nil) EmuValidationFailure(method, "the image is nil");
  if (matrix == nil) EmuValidationFailure(method, "the matrix is nil");
  if ([image device] != [kernel device] || [matrix device] != [kernel device] ||
      [cb device] != [kernel device]) {
    EmuValidationFailure(method, "the kernel, command buffer, image and matrix must share one device");
  }
  const MPSDataType want = MatrixTypeOf([image featureChannelFormat]);
  if ([matrix dataType] != want) {
    EmuValidationFailure(method, std::string("the matrix's dataType ") + EmuDataTypeName([matrix dataType]) +
                                     " does not match the image's feature channel type " + EmuDataTypeName(want));
  }
  if (batchIndex >= [matrix matrices]) {
    EmuValidationFailure(method, "matrix batch index " + S(batchIndex) + " is not less than matrices " +
                                     S([matrix matrices]));
  }
  const size_t per_image = [image width] * [image height] * [image featureChannels];
  // "The number of elements in a row in the matrix must be greater than the image width
  // multiplied its height multiplied by the number of featureChannels": one image per
  // row, from the origin's column on, one row per image from the origin's row on.
  if (origin.z != 0) EmuValidationFailure(method, "matrix origin.z must be 0");
  if (origin.x > [matrix columns] || per_image > [matrix columns] - origin.x) {
    EmuValidationFailure(method, "a matrix row holds " + S([matrix columns]) + " columns; from column " +
                                     S(origin.x) + " an image needs " + S(per_image) + " (width * height * featureChannels)");
  }
  if (origin.y > [matrix rows] || [image numberOfImages] > [matrix rows] - origin.y) {
    EmuValidationFailure(method, "the matrix has " + S([matrix rows]) + " rows; from row " + S(origin.y) + ", " +
                                     S([image numberOfImages]) + " images need one row each");
  }
}

// Element offset of (h, w, c) in one image's row, for a data layout.
inline size_t RowIndex(MPSDataLayout layout, size_t h, size_t w, size_t c, size_t H, size_t W, size_t C) {
  return layout == MPSDataLayoutHeightxWidthxFeatureChannels ? (h * W + w) * C + c : (c * H + h) * W + w;
}

}  // namespace

// One image per matrix row, channels in the order of dataLayout. Own loops rather than
// the CPU backend's converter: these are pure index maps, and a second implementation
// written from Apple's description is what makes comparing the two a test of the layout.
@implementation MPSImageCopyToMatrix {
  MPSDataLayout _dataLayout;
}
@synthesize destinationMatrixOrigin, destinationMatrixBatchIndex;

- (instancetype)initWithDevice:(id<MTLDevice>)device dataLayout:(MPSDataLayout)dataLayout {
  if (dataLayout > MPSDataLayoutFeatureChannelsxHeightxWidth) {
    EmuValidationFailure("-[MPSImageCopyToMatrix initWithDevice:dataLayout:]", "invalid dataLayout");
  }
  self = [super initWithDevice:device];
  if (self != nil) _dataLayout = dataLayout;
  return self;
}

- (MPSDataLayout)dataLayout {
  return _dataLayout;
}

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                  sourceImage:(MPSImage*)sourceImage
            destinationMatrix:(MPSMatrix*)destinationMatrix {
  const char* method = "-[MPSImageCopyToMatrix encodeToCommandBuffer:sourceImage:destinationMatrix:]";
  const MTLOrigin origin = self.destinationMatrixOrigin;
  const NSUInteger batch = self.destinationMatrixBatchIndex;
  CheckCopy(method, self, commandBuffer, sourceImage, destinationMatrix, origin, batch);
  MPSImage* image = sourceImage;
  MPSMatrix* matrix = destinationMatrix;
  const MPSDataLayout layout = _dataLayout;
  EmuEncode(commandBuffer, method, [image, matrix, layout, origin, batch] {
    const size_t e = [image elementBytes], H = [image height], W = [image width], C = [image featureChannels];
    const uint8_t* src = [image gpuBytes];
    uint8_t* base = static_cast<uint8_t*>(EmuBufferBytes([matrix data])) + [matrix offset] + batch * [matrix matrixBytes];
    for (size_t n = 0; n < [image numberOfImages]; ++n) {
      uint8_t* row = base + (origin.y + n) * [matrix rowBytes] + origin.x * e;
      for (size_t h = 0; h < H; ++h) {
        for (size_t w = 0; w < W; ++w) {
          for (size_t c = 0; c < C; ++c) {
            std::memcpy(row + RowIndex(layout, h, w, c, H, W, C) * e,
                        src + [image indexOfImage:n channel:c row:h column:w] * e, e);
          }
        }
      }
    }
  });
}

@end

@implementation MPSMatrixCopyToImage {
  MPSDataLayout _dataLayout;
}
@synthesize sourceMatrixOrigin, sourceMatrixBatchIndex;

- (instancetype)initWithDevice:(id<MTLDevice>)device dataLayout:(MPSDataLayout)dataLayout {
  if (dataLayout > MPSDataLayoutFeatureChannelsxHeightxWidth) {
    EmuValidationFailure("-[MPSMatrixCopyToImage initWithDevice:dataLayout:]", "invalid dataLayout");
  }
  self = [super initWithDevice:device];
  if (self != nil) _dataLayout = dataLayout;
  return self;
}

- (MPSDataLayout)dataLayout {
  return _dataLayout;
}

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                 sourceMatrix:(MPSMatrix*)sourceMatrix
             destinationImage:(MPSImage*)destinationImage {
  const char* method = "-[MPSMatrixCopyToImage encodeToCommandBuffer:sourceMatrix:destinationImage:]";
  const MTLOrigin origin = self.sourceMatrixOrigin;
  const NSUInteger batch = self.sourceMatrixBatchIndex;
  CheckCopy(method, self, commandBuffer, destinationImage, sourceMatrix, origin, batch);
  MPSImage* image = destinationImage;
  MPSMatrix* matrix = sourceMatrix;
  const MPSDataLayout layout = _dataLayout;
  // The image is being written from now until the work has run: CPU access meanwhile
  // is refused (see checkCpuAccess).
  [image beginGpuWrite];
  EmuEncode(
      commandBuffer, method,
      [image, matrix, layout, origin, batch] {
        const size_t e = [image elementBytes], H = [image height], W = [image width], C = [image featureChannels];
        uint8_t* dst = [image gpuBytes];
        const uint8_t* base =
            static_cast<const uint8_t*>(EmuBufferBytes([matrix data])) + [matrix offset] + batch * [matrix matrixBytes];
        for (size_t n = 0; n < [image numberOfImages]; ++n) {
          const uint8_t* row = base + (origin.y + n) * [matrix rowBytes] + origin.x * e;
          for (size_t h = 0; h < H; ++h) {
            for (size_t w = 0; w < W; ++w) {
              for (size_t c = 0; c < C; ++c) {
                std::memcpy(dst + [image indexOfImage:n channel:c row:h column:w] * e,
                            row + RowIndex(layout, h, w, c, H, W, C) * e, e);
              }
              for (size_t c = C; c % 4 != 0; ++c) {
                std::memset(dst + [image indexOfImage:n channel:c row:h column:w] * e, 0, e);
              }
            }
          }
        }
      },
      [image] { [image endGpuWrite]; });
}

@end

// ------------------------------------------------------------ matrix multiplication
// MPSMatrixMultiplication.h: C = alpha * op(A) * op(B) + beta * C, on a window of each
// matrix that starts at the kernel's origin for it, for each matrix index of the batch.
// The CPU BLAS (ops/common/blas.h, row-major, rowBytes / element size as the leading
// dimension) computes it. Where Apple is silent the fake chooses, and says so:
//  * origin.x is the row and origin.y the column of a window's first element, in the
//    matrix as stored (before op()). MPSMatrixMultiplication.h does not say which is
//    which; the same header puts MPSMatrixVectorMultiplication's vectors (columns) at
//    origin.x with y = 0, and code that runs on Macs sets these origins as (row, column, 0).
//  * float32 and float16 only, all three matrices of one type; anything else is refused
//    (Apple documents no mixed-type product). float16 is widened to float32, multiplied
//    with sgemm and rounded once to float16 (Apple does not document its accumulator).
//  * alpha and beta ("scalar values of the same data type as the values of C", "converted
//    to the appropriate precision ... subject to rounding and/or clamping") are rounded to
//    the matrices' type; for float16 a finite value is first clamped to +-65504.
//  * beta == 0 does not read C, which may hold anything (NaN), as BLAS defines it.
//  * Emulation checks: a window of the result that overlaps a window of an input in the
//    same buffer is refused (a GPU kernel that writes what it reads gives undefined
//    results), and so are an empty product (a size of 0), an explicit batchSize of 0 and
//    sizes beyond the BLAS's int.
namespace {

// A window of a matrix as stored: rows x cols elements from (row, col).
struct GemmWindow {
  size_t row, col, rows, cols;
};

// Everything the work needs, fixed at encode time as a GPU kernel's arguments are.
struct GemmArgs {
  MPSDataType type;
  bool trans_a, trans_b;
  size_t m, n, k;
  float alpha, beta;
  GemmWindow a, b, c;
  size_t first, count;  // the batch
};

constexpr double kFloat16Max = 65504.0;

float RoundScalar(double v, MPSDataType type) {
  if (type == MPSDataTypeFloat16) {
    if (std::isfinite(v)) v = std::min(kFloat16Max, std::max(-kFloat16Max, v));
    return static_cast<float>(static_cast<_Float16>(v));
  }
  return static_cast<float>(v);
}

// The from-origin window a matrix must hold, checked as MPSMatrixMultiplication.h states it.
GemmWindow CheckWindow(const char* method, const char* name, MPSMatrix* m, MTLOrigin origin, size_t rows,
                       size_t cols, const std::string& what) {
  const std::string origin_name = std::string(name) + "MatrixOrigin";
  if (origin.z != 0) EmuValidationFailure(method, origin_name + ".z is " + S(origin.z) + "; it must be 0");
  if (origin.x > [m rows] || rows > [m rows] - origin.x || origin.y > [m columns] || cols > [m columns] - origin.y) {
    EmuValidationFailure(method, std::string(name) + "Matrix (" + S([m rows]) + " x " + S([m columns]) +
                                     ") does not hold " + what + ", " + S(rows) + " x " + S(cols) +
                                     " elements as stored, from " + origin_name + " (row x = " + S(origin.x) +
                                     ", column y = " + S(origin.y) + ")");
  }
  return GemmWindow{static_cast<size_t>(origin.x), static_cast<size_t>(origin.y), rows, cols};
}

// The byte ranges [begin, end) of a window's rows in each matrix of the batch.
std::vector<std::pair<size_t, size_t>> WindowRanges(MPSMatrix* m, const GemmWindow& w, size_t first, size_t count) {
  const size_t elem = EmuElementSize([m dataType]);
  std::vector<std::pair<size_t, size_t>> ranges;
  ranges.reserve(count * w.rows);
  for (size_t i = first; i < first + count; ++i) {
    for (size_t r = 0; r < w.rows; ++r) {
      const size_t begin = [m offset] + i * [m matrixBytes] + (w.row + r) * [m rowBytes] + w.col * elem;
      ranges.emplace_back(begin, begin + w.cols * elem);
    }
  }
  return ranges;
}

// Whether any byte of the result's windows is a byte of the input's windows. The
// result's ranges are disjoint (rowBytes and matrixBytes keep rows and matrices apart),
// so after sorting, only the last one starting before an input range ends can meet it.
bool WindowsOverlap(MPSMatrix* result, const GemmWindow& wc, MPSMatrix* input, const GemmWindow& wi, size_t first,
                    size_t count) {
  if ([result data] != [input data]) return false;
  std::vector<std::pair<size_t, size_t>> c = WindowRanges(result, wc, first, count);
  std::sort(c.begin(), c.end());
  for (const auto& in : WindowRanges(input, wi, first, count)) {
    auto it = std::lower_bound(c.begin(), c.end(), std::make_pair(in.second, size_t{0}));
    if (it != c.begin() && std::prev(it)->second > in.first) return true;
  }
  return false;
}

uint8_t* WindowBase(MPSMatrix* m, const GemmWindow& w, size_t index) {
  return static_cast<uint8_t*>(EmuBufferBytes([m data])) + [m offset] + index * [m matrixBytes] +
         w.row * [m rowBytes] + w.col * EmuElementSize([m dataType]);
}

// A float16 window widened to a dense float32 one (leading dimension w.cols).
std::vector<float> Widen(MPSMatrix* m, const GemmWindow& w, size_t index) {
  std::vector<float> out(w.rows * w.cols);
  const uint8_t* base = WindowBase(m, w, index);
  for (size_t r = 0; r < w.rows; ++r) {
    const auto* row = reinterpret_cast<const _Float16*>(base + r * [m rowBytes]);
    for (size_t c = 0; c < w.cols; ++c) out[r * w.cols + c] = static_cast<float>(row[c]);
  }
  return out;
}

void RunGemm(const GemmArgs& g, MPSMatrix* left, MPSMatrix* right, MPSMatrix* result) {
  // The "GPU" of the emulation is one worker thread per queue, running beside
  // TensorFlow's own threads: OpenBLAS's worker threads, which spin after each call,
  // would take the cores from them (measured on 2 cores: a Dense training step on the
  // device 97 ms with OpenBLAS's default threads, 25 ms with one). One thread, for the
  // process (the emulation is a test vehicle; the op library's BLAS calls are
  // single-threaded already).
  static const bool one_thread = [] {
    tfmps::blas::SetNumThreads(1);
    return true;
  }();
  (void)one_thread;
  const int m = static_cast<int>(g.m), n = static_cast<int>(g.n), k = static_cast<int>(g.k);
  for (size_t i = g.first; i < g.first + g.count; ++i) {
    if (g.type == MPSDataTypeFloat32) {
      auto* c = reinterpret_cast<float*>(WindowBase(result, g.c, i));
      const size_t ldc = [result rowBytes] / sizeof(float);
      if (g.beta == 0.0f) {
        for (size_t r = 0; r < g.m; ++r) std::memset(c + r * ldc, 0, g.n * sizeof(float));  // C is not read
      }
      tfmps::blas::Sgemm(g.trans_a, g.trans_b, m, n, k, g.alpha,
                         reinterpret_cast<const float*>(WindowBase(left, g.a, i)),
                         static_cast<int>([left rowBytes] / sizeof(float)),
                         reinterpret_cast<const float*>(WindowBase(right, g.b, i)),
                         static_cast<int>([right rowBytes] / sizeof(float)), g.beta, c, static_cast<int>(ldc));
    } else {  // float16
      const std::vector<float> a = Widen(left, g.a, i), b = Widen(right, g.b, i);
      std::vector<float> c = g.beta == 0.0f ? std::vector<float>(g.m * g.n, 0.0f) : Widen(result, g.c, i);
      tfmps::blas::Sgemm(g.trans_a, g.trans_b, m, n, k, g.alpha, a.data(), static_cast<int>(g.a.cols), b.data(),
                         static_cast<int>(g.b.cols), g.beta, c.data(), n);
      uint8_t* base = WindowBase(result, g.c, i);
      for (size_t r = 0; r < g.m; ++r) {
        auto* row = reinterpret_cast<_Float16*>(base + r * [result rowBytes]);
        for (size_t col = 0; col < g.n; ++col) row[col] = static_cast<_Float16>(c[r * g.n + col]);
      }
    }
  }
}

void CheckGemmInit(const char* method, id<MTLDevice> device, NSUInteger rows, NSUInteger columns,
                   NSUInteger interior) {
  if (device == nil) EmuValidationFailure(method, "device is nil");
  if (rows == 0 || columns == 0 || interior == 0) {
    EmuValidationFailure(method, "emulation check: resultRows (" + S(rows) + "), resultColumns (" + S(columns) +
                                     ") and interiorColumns (" + S(interior) +
                                     ") must all be at least 1 (Apple documents no empty product)");
  }
}

}  // namespace

@implementation MPSMatrixMultiplication {
  BOOL _transposeLeft, _transposeRight;
  NSUInteger _resultRows, _resultColumns, _interiorColumns;
  double _alpha, _beta;
  NSUInteger _batchSize;
  BOOL _batchSizeSet;  // until set, the batch is every matrix from batchStart on
}
@synthesize resultMatrixOrigin, leftMatrixOrigin, rightMatrixOrigin, batchStart;

- (instancetype)initWithDevice:(id<MTLDevice>)device
                 transposeLeft:(BOOL)transposeLeft
                transposeRight:(BOOL)transposeRight
                    resultRows:(NSUInteger)resultRows
                 resultColumns:(NSUInteger)resultColumns
               interiorColumns:(NSUInteger)interiorColumns
                         alpha:(double)alpha
                          beta:(double)beta {
  CheckGemmInit("-[MPSMatrixMultiplication initWithDevice:transposeLeft:transposeRight:resultRows:resultColumns:"
                "interiorColumns:alpha:beta:]",
                device, resultRows, resultColumns, interiorColumns);
  self = [super initEmuWithDevice:device];  // (nil when the test hook says so)
  if (self == nil) return nil;
  _transposeLeft = transposeLeft;
  _transposeRight = transposeRight;
  _resultRows = resultRows;
  _resultColumns = resultColumns;
  _interiorColumns = interiorColumns;
  _alpha = alpha;
  _beta = beta;
  return self;
}

// "no transpositions, unit scaling of the product, and no accumulation of the result".
- (instancetype)initWithDevice:(id<MTLDevice>)device
                    resultRows:(NSUInteger)resultRows
                 resultColumns:(NSUInteger)resultColumns
               interiorColumns:(NSUInteger)interiorColumns {
  CheckGemmInit("-[MPSMatrixMultiplication initWithDevice:resultRows:resultColumns:interiorColumns:]", device,
                resultRows, resultColumns, interiorColumns);
  return [self initWithDevice:device
                transposeLeft:NO
               transposeRight:NO
                   resultRows:resultRows
                resultColumns:resultColumns
              interiorColumns:interiorColumns
                        alpha:1.0
                         beta:0.0];
}

// Apple documents the default's meaning (all matrices at encoding time), not its value:
// here 0 until set.
- (NSUInteger)batchSize {
  return _batchSize;
}

- (void)setBatchSize:(NSUInteger)batchSize {
  _batchSize = batchSize;
  _batchSizeSet = YES;
}

- (void)encodeToCommandBuffer:(id<MTLCommandBuffer>)commandBuffer
                   leftMatrix:(MPSMatrix*)leftMatrix
                  rightMatrix:(MPSMatrix*)rightMatrix
                 resultMatrix:(MPSMatrix*)resultMatrix {
  const char* method = "-[MPSMatrixMultiplication encodeToCommandBuffer:leftMatrix:rightMatrix:resultMatrix:]";
  if (commandBuffer == nil) EmuValidationFailure(method, "commandBuffer is nil");
  if (leftMatrix == nil) EmuValidationFailure(method, "leftMatrix is nil");
  if (rightMatrix == nil) EmuValidationFailure(method, "rightMatrix is nil");
  if (resultMatrix == nil) EmuValidationFailure(method, "resultMatrix is nil");
  if ([commandBuffer device] != [self device]) EmuValidationFailure(method, "the command buffer is for another device");
  if ([leftMatrix device] != [self device] || [rightMatrix device] != [self device] ||
      [resultMatrix device] != [self device]) {
    EmuValidationFailure(method, "the kernel and its three matrices must share one device");
  }
  const MPSDataType type = [resultMatrix dataType];
  if ([leftMatrix dataType] != type || [rightMatrix dataType] != type) {
    EmuValidationFailure(method, std::string("emulation check: the matrices' data types differ (left ") +
                                     EmuDataTypeName([leftMatrix dataType]) + ", right " +
                                     EmuDataTypeName([rightMatrix dataType]) + ", result " + EmuDataTypeName(type) +
                                     "); Apple documents no mixed-type product");
  }
  if (type != MPSDataTypeFloat32 && type != MPSDataTypeFloat16) {
    EmuValidationFailure(method, std::string("emulation check: the fake multiplies MPSDataTypeFloat32 and "
                                             "MPSDataTypeFloat16 matrices only, not ") +
                                     EmuDataTypeName(type));
  }

  GemmArgs g;
  g.type = type;
  g.trans_a = _transposeLeft;
  g.trans_b = _transposeRight;
  g.m = _resultRows;
  g.n = _resultColumns;
  g.k = _interiorColumns;
  g.alpha = RoundScalar(_alpha, type);
  g.beta = RoundScalar(_beta, type);
  // Stored shapes: op(A) is M x K, so A is K x M when transposed; op(B) is K x N.
  g.a = CheckWindow(method, "left", leftMatrix, self.leftMatrixOrigin, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k,
                    g.trans_a ? "op(A) = A**T (resultRows x interiorColumns)" : "op(A) = A (resultRows x interiorColumns)");
  g.b = CheckWindow(method, "right", rightMatrix, self.rightMatrixOrigin, g.trans_b ? g.n : g.k,
                    g.trans_b ? g.k : g.n,
                    g.trans_b ? "op(B) = B**T (interiorColumns x resultColumns)"
                              : "op(B) = B (interiorColumns x resultColumns)");
  g.c = CheckWindow(method, "result", resultMatrix, self.resultMatrixOrigin, g.m, g.n, "C (resultRows x resultColumns)");

  // "Each matrix within the range specified by batchStart and batchSize, which also
  // specifies a valid set of matrices within leftMatrix, rightMatrix, and resultMatrix".
  g.first = self.batchStart;
  if (!_batchSizeSet) {
    if (g.first >= [resultMatrix matrices]) {
      EmuValidationFailure(method, "batchStart " + S(g.first) + " is not less than resultMatrix.matrices " +
                                       S([resultMatrix matrices]));
    }
    g.count = [resultMatrix matrices] - g.first;
  } else {
    if (_batchSize == 0) {
      EmuValidationFailure(method, "emulation check: batchSize is 0 (Apple documents no meaning for an empty batch)");
    }
    g.count = _batchSize;
  }
  const std::pair<const char*, MPSMatrix*> all[] = {{"leftMatrix", leftMatrix}, {"rightMatrix", rightMatrix},
                                                    {"resultMatrix", resultMatrix}};
  for (const auto& [name, m] : all) {
    if (g.first > [m matrices] || g.count > [m matrices] - g.first) {
      EmuValidationFailure(method, "the batch [" + S(g.first) + ", " + S(g.first + g.count) + ") is not within the " +
                                       S([m matrices]) + " matrices of " + name);
    }
  }

  if (WindowsOverlap(resultMatrix, g.c, leftMatrix, g.a, g.first, g.count) ||
      WindowsOverlap(resultMatrix, g.c, rightMatrix, g.b, g.first, g.count)) {
    EmuValidationFailure(method, "emulation check: the result's window overlaps an input's window in the same "
                                 "buffer (a kernel that overwrites what it reads gives undefined results)");
  }
  for (size_t v : {g.m, g.n, g.k, size_t{[leftMatrix rowBytes]}, size_t{[rightMatrix rowBytes]},
                   size_t{[resultMatrix rowBytes]}}) {
    if (v > static_cast<size_t>(INT_MAX)) {
      EmuValidationFailure(method, "emulation limit: a size or rowBytes of " + S(v) + " exceeds the CPU BLAS's int");
    }
  }

  MPSMatrix* left = leftMatrix;
  MPSMatrix* right = rightMatrix;
  MPSMatrix* result = resultMatrix;
  EmuEncode(commandBuffer, method, [g, left, right, result] { RunGemm(g, left, right, result); });
}

@end
