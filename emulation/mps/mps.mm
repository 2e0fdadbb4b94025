// CPU fakes of the MetalPerformanceShaders classes the project uses, beyond the
// optimizers (mps_optimizers.mm): MPSKernel, vectors, matrices, images and the two
// image <-> matrix converters. Linux emulation only; built with ARC.
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

#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#include "emulation/metal/metal_emu.h"
#include "emulation/mps/mps_emu.h"
#include "emulation/runtime/objc_emu.h"

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
  d->_dataType = dataType;
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
- (NSUInteger)matrices { return 1; }
- (MPSDataType)dataType { return _dataType; }
- (void)setDataType:(MPSDataType)dataType { _dataType = dataType; }
- (NSUInteger)rowBytes { return _rowBytes; }
- (void)setRowBytes:(NSUInteger)rowBytes { _rowBytes = rowBytes; }
- (NSUInteger)matrixBytes { return _rows * _rowBytes; }

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
  const size_t bytes = ([descriptor matrices] - 1) * [descriptor matrixBytes] + (rows - 1) * rowBytes + columns * elem;
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

// What the copy kernels need of an image, beyond Apple's API.
@interface MPSImage ()
- (uint8_t*)gpuBytes;
- (size_t)elementBytes;
- (NSUInteger)slices;
- (void)beginGpuWrite;
- (void)endGpuWrite;
- (size_t)indexOfImage:(NSUInteger)n channel:(NSUInteger)c row:(NSUInteger)h column:(NSUInteger)w;
@end

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
