// The emulation's Foundation, beyond the root class (nsobject.mm): NSString (with the
// class of @"..." literals), NSArray, NSDictionary and NSError, as little as the
// project's .mm files and the Metal/MPS fakes use. Linux only; built with ARC.
//
// Each behaves as Apple documents it; where Apple raises an Objective-C exception
// (NSInvalidArgumentException, NSRangeException), the emulation has no exceptions and
// aborts with the same message instead, which is what an uncaught exception does.
#import <Foundation/Foundation.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "emulation/runtime/objc_emu.h"

namespace {

[[noreturn]] void Raise(const char* name, const std::string& reason) {
  std::fprintf(stderr, "tf-mps Foundation emulation: *** Terminating app due to uncaught exception '%s', reason: '%s'\n",
               name, reason.c_str());
  std::abort();
}

// NSString's length counts UTF-16 code units: one per code point below U+10000, two
// above (a surrogate pair). Bytes of malformed UTF-8 count one each.
NSUInteger Utf16Length(const char* s, size_t n) {
  NSUInteger units = 0;
  for (size_t i = 0; i < n;) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (i + len > n) len = 1;
    units += len == 4 ? 2 : 1;
    i += len;
  }
  return units;
}

std::string Utf16ToUtf8(const uint16_t* s, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    uint32_t cp = s[i];
    if (cp >= 0xD800 && cp < 0xDC00 && i + 1 < n && s[i + 1] >= 0xDC00 && s[i + 1] < 0xE000) {
      cp = 0x10000 + ((cp - 0xD800) << 10) + (s[i + 1] - 0xDC00);
      ++i;
    }
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return out;
}

}  // namespace

// ------------------------------------------------------------------------- NSString
// A class cluster, as on Apple's platforms: NSString itself only defines what follows
// from the two primitives (-UTF8String, -length here), and instances belong to the
// private subclasses below.
@interface TFMPSHeapString : NSString
@end

@implementation NSString

// [NSString alloc] hands out a heap string to be initialized (Apple hands out a
// placeholder that picks the concrete class at init).
+ (instancetype)allocWithZone:(NSZone*)zone {
  if (self == [NSString class]) return [TFMPSHeapString allocWithZone:zone];
  return [super allocWithZone:zone];
}

+ (instancetype)stringWithUTF8String:(const char*)nullTerminatedCString {
  return [[TFMPSHeapString alloc] initWithUTF8String:nullTerminatedCString];
}

- (instancetype)initWithUTF8String:(const char*)nullTerminatedCString {
  Raise("NSInvalidArgumentException", "-[NSString initWithUTF8String:] sent to an abstract NSString");
}

- (const char*)UTF8String {
  Raise("NSInvalidArgumentException", "-[NSString UTF8String]: only a subclass implements it");
}

- (NSUInteger)length {
  const char* s = [self UTF8String];
  return Utf16Length(s, std::strlen(s));
}

- (BOOL)isEqualToString:(NSString*)aString {
  if (aString == nil) return NO;
  if (aString == self) return YES;
  return std::strcmp([self UTF8String], [aString UTF8String]) == 0;
}

- (BOOL)isEqual:(id)object {
  return [object isKindOfClass:[NSString class]] && [self isEqualToString:(NSString*)object];
}

// Equal strings hash equally (FNV-1a over the UTF-8 bytes).
- (NSUInteger)hash {
  NSUInteger h = 1469598103934665603UL;
  for (const char* p = [self UTF8String]; *p != '\0'; ++p) {
    h = (h ^ static_cast<unsigned char>(*p)) * 1099511628211UL;
  }
  return h;
}

// Immutable: a copy is the string itself.
- (id)copyWithZone:(NSZone*)zone {
  return self;
}

- (NSString*)description {
  return self;
}

@end

@implementation TFMPSHeapString {
  std::string _bytes;
}

// Apple raises on a NULL argument and returns nil for bytes that are not UTF-8; this
// fake does not validate the encoding.
- (instancetype)initWithUTF8String:(const char*)nullTerminatedCString {
  if (nullTerminatedCString == nullptr) {
    Raise("NSInvalidArgumentException", "*** -[NSPlaceholderString initWithUTF8String:]: NULL cString");
  }
  self = [super init];
  if (self != nil) _bytes = nullTerminatedCString;
  return self;
}

- (const char*)UTF8String {
  return _bytes.c_str();
}

- (NSUInteger)length {
  return Utf16Length(_bytes.data(), _bytes.size());
}

@end

// The class of every @"..." literal. clang lays a literal out as
// {isa = &__CFConstantStringClassReference, int flags, const char* str, long length}:
// these ivars follow isa in exactly that order. ASCII literals have flags 0x7c8 and
// `length` bytes at str; others flags 0x7d0 and `length` UTF-16 units. The runtime
// counts no references to objects of this class (they live in the binary's data).
@interface TFMPSConstantString : NSString {
 @public
  int _flags;
  const char* _str;
  long _length;
}
@end

@implementation TFMPSConstantString

- (const char*)UTF8String {
  if (_flags != 0x7d0) return _str;
  // A UTF-16 literal: convert once and keep the result as long as the literal lives
  // (the whole process), so the returned inner pointer never dangles.
  static std::mutex mu;
  static auto* converted = new std::map<const void*, std::string>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = converted->find(_str);
  if (it == converted->end()) {
    it = converted
             ->emplace(_str, Utf16ToUtf8(reinterpret_cast<const uint16_t*>(_str),
                                         static_cast<size_t>(_length)))
             .first;
  }
  return it->second.c_str();
}

- (NSUInteger)length {
  return _flags == 0x7d0 ? static_cast<NSUInteger>(_length)
                         : Utf16Length(_str, static_cast<size_t>(_length));
}

@end

// The symbol every literal's isa points at: an alias of the constant-string class
// object (on Apple's platforms it is CoreFoundation's __NSCFConstantString).
asm(".globl __CFConstantStringClassReference\n"
    ".set __CFConstantStringClassReference, \"OBJC_CLASS_$_TFMPSConstantString\"\n");

// -------------------------------------------------------------------------- NSArray
// Immutable, so not a cluster here: one concrete class holding strong references.
@implementation NSArray {
  std::vector<id> _objects;
}

- (instancetype)initWithObjects:(const id[])objects count:(NSUInteger)cnt {
  self = [super init];
  if (self == nil) return nil;
  _objects.reserve(cnt);
  for (NSUInteger i = 0; i < cnt; ++i) {
    if (objects[i] == nil) {
      Raise("NSInvalidArgumentException",
            "*** -[__NSPlaceholderArray initWithObjects:count:]: attempt to insert nil object from objects[" +
                std::to_string(i) + "]");
    }
    _objects.push_back(objects[i]);
  }
  return self;
}

+ (instancetype)arrayWithObjects:(const id[])objects count:(NSUInteger)cnt {
  return [[self alloc] initWithObjects:objects count:cnt];
}

- (NSUInteger)count {
  return _objects.size();
}

- (id)objectAtIndex:(NSUInteger)index {
  if (index >= _objects.size()) {
    Raise("NSRangeException", "*** -[NSArray objectAtIndex:]: index " + std::to_string(index) +
                                  (_objects.empty() ? std::string(" beyond bounds for empty array")
                                                    : " beyond bounds [0 .. " +
                                                          std::to_string(_objects.size() - 1) + "]"));
  }
  return _objects[index];
}

- (id)objectAtIndexedSubscript:(NSUInteger)idx {
  return [self objectAtIndex:idx];
}

- (id)firstObject {
  return _objects.empty() ? nil : _objects.front();
}

// One batch holding every element: the array is immutable, so the mutation counter
// never changes.
- (NSUInteger)countByEnumeratingWithState:(NSFastEnumerationState*)state
                                  objects:(id __unsafe_unretained[])buffer
                                    count:(NSUInteger)len {
  if (state->state != 0) return 0;
  state->state = 1;
  state->itemsPtr = (__unsafe_unretained id*)(void*)_objects.data();
  state->mutationsPtr = &state->extra[0];
  return _objects.size();
}

- (id)copyWithZone:(NSZone*)zone {
  return self;
}

@end

// --------------------------------------------------------------------- NSDictionary
// Linear lookup by -isEqual:: the dictionaries here hold a handful of entries.
@implementation NSDictionary {
  std::vector<id> _keys;
  std::vector<id> _values;
}

- (instancetype)initWithObjects:(const id[])objects forKeys:(const id<NSCopying>[])keys count:(NSUInteger)cnt {
  self = [super init];
  if (self == nil) return nil;
  for (NSUInteger i = 0; i < cnt; ++i) {
    if (objects[i] == nil || keys[i] == nil) {
      Raise("NSInvalidArgumentException",
            "*** -[__NSPlaceholderDictionary initWithObjects:forKeys:count:]: attempt to insert nil " +
                std::string(objects[i] == nil ? "object" : "key") + " from objects[" + std::to_string(i) + "]");
    }
    // Apple copies keys; a later duplicate replaces the earlier value.
    id key = [(id)keys[i] copyWithZone:nullptr];
    bool replaced = false;
    for (size_t k = 0; k < _keys.size(); ++k) {
      if ([_keys[k] isEqual:key]) {
        _values[k] = objects[i];
        replaced = true;
      }
    }
    if (!replaced) {
      _keys.push_back(key);
      _values.push_back(objects[i]);
    }
  }
  return self;
}

+ (instancetype)dictionaryWithObjects:(const id[])objects forKeys:(const id<NSCopying>[])keys count:(NSUInteger)cnt {
  return [[self alloc] initWithObjects:objects forKeys:keys count:cnt];
}

- (NSUInteger)count {
  return _keys.size();
}

- (id)objectForKey:(id)aKey {
  for (size_t k = 0; k < _keys.size(); ++k) {
    if ([_keys[k] isEqual:aKey]) return _values[k];
  }
  return nil;
}

- (id)objectForKeyedSubscript:(id)key {
  return [self objectForKey:key];
}

- (id)copyWithZone:(NSZone*)zone {
  return self;
}

@end

// -------------------------------------------------------------------------- NSError
extern "C" NSErrorUserInfoKey const NSLocalizedDescriptionKey = @"NSLocalizedDescription";

@implementation NSError {
  NSString* _domain;
  NSInteger _code;
  NSDictionary* _userInfo;
}

// Apple: the domain must not be nil (it raises); userInfo may be nil.
- (instancetype)initWithDomain:(NSErrorDomain)domain code:(NSInteger)code userInfo:(NSDictionary*)dict {
  if (domain == nil) Raise("NSInvalidArgumentException", "-[NSError initWithDomain:code:userInfo:]: nil domain");
  self = [super init];
  if (self == nil) return nil;
  _domain = [domain copy];
  _code = code;
  _userInfo = [dict copy];
  return self;
}

+ (instancetype)errorWithDomain:(NSErrorDomain)domain code:(NSInteger)code userInfo:(NSDictionary*)dict {
  return [[self alloc] initWithDomain:domain code:code userInfo:dict];
}

- (NSErrorDomain)domain {
  return _domain;
}

- (NSInteger)code {
  return _code;
}

- (NSDictionary*)userInfo {
  return _userInfo;
}

// The NSLocalizedDescriptionKey entry if there is one; otherwise Apple composes a
// sentence from the domain and code.
- (NSString*)localizedDescription {
  id text = [_userInfo objectForKey:NSLocalizedDescriptionKey];
  if ([text isKindOfClass:[NSString class]]) return text;
  const std::string s = std::string("The operation couldn\u2019t be completed. (") + [_domain UTF8String] +
                        " error " + std::to_string(_code) + ".)";
  return [NSString stringWithUTF8String:s.c_str()];
}

- (NSString*)description {
  const std::string s = std::string("Error Domain=") + [_domain UTF8String] + " Code=" + std::to_string(_code) +
                        " \"" + [[self localizedDescription] UTF8String] + "\"";
  return [NSString stringWithUTF8String:s.c_str()];
}

- (id)copyWithZone:(NSZone*)zone {
  return self;
}

@end
