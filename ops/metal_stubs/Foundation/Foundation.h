// Declaration subset of Apple's Foundation and objc runtime headers. Two builds use it:
// tools/metal_typecheck.sh compiles ops/**/*.mm against it on Linux (-fsyntax-only), and
// the Linux emulation (emulation/: an Apple-ABI runtime and CPU fakes of Foundation,
// Metal and MPS) compiles and runs the same files against it. macOS builds use the real
// SDK. Only what the .mm files and the fakes use is declared, each name and type checked
// against Apple's documentation (developer.apple.com), Apple's SDK headers and PyObjC's
// metadata. Add a declaration together with the code that needs it. Nullability
// annotations are left out on purpose: partial annotation would trip
// -Wnullability-completeness.
#ifndef TFMPS_STUB_FOUNDATION_H_
#define TFMPS_STUB_FOUNDATION_H_

// 64-bit Apple platforms (LP64): NSUInteger is unsigned long, NSInteger long.
typedef unsigned long NSUInteger;
typedef long NSInteger;

// BOOL is C bool on Apple silicon (objc.h: OBJC_BOOL_IS_BOOL on arm64).
typedef bool BOOL;
#define YES __objc_yes
#define NO __objc_no
#define nil nullptr  // objc.h's definition when the compiler has nullptr

// NS_ENUM / NS_OPTIONS as Foundation defines them for C++: a typed enum, and for
// options an integer typedef plus an anonymous enum (so `a | b` needs no cast).
#define NS_ENUM(_type, _name) enum _name : _type _name; enum _name : _type
#define NS_OPTIONS(_type, _name) _type _name; enum : _type
#define NS_RETURNS_INNER_POINTER __attribute__((objc_returns_inner_pointer))
#define NS_RETURNS_RETAINED __attribute__((ns_returns_retained))
#define NS_UNAVAILABLE __attribute__((unavailable))
// objc/NSObject.h: retain/release/autorelease/retainCount are unavailable under ARC.
#if __has_feature(objc_arc)
#define OBJC_ARC_UNAVAILABLE __attribute__((unavailable("not available in automatic reference counting mode")))
#else
#define OBJC_ARC_UNAVAILABLE
#endif

@class NSString;

// NSZone.h: an opaque type; every zone argument is ignored (and usually nil) today.
typedef struct _NSZone NSZone;

// NSRange.h.
typedef struct _NSRange {
  NSUInteger location;
  NSUInteger length;
} NSRange;
static inline NSRange NSMakeRange(NSUInteger loc, NSUInteger len) {
  NSRange r;
  r.location = loc;
  r.length = len;
  return r;
}

// objc/NSObject.h: the NSObject protocol.
@protocol NSObject
- (BOOL)isEqual:(id)object;
@property(readonly) NSUInteger hash;
- (Class)class;
- (instancetype)self;
- (BOOL)isKindOfClass:(Class)aClass;
- (BOOL)isMemberOfClass:(Class)aClass;
- (BOOL)respondsToSelector:(SEL)aSelector;
- (instancetype)retain OBJC_ARC_UNAVAILABLE;
- (oneway void)release OBJC_ARC_UNAVAILABLE;
- (instancetype)autorelease OBJC_ARC_UNAVAILABLE;
- (NSUInteger)retainCount OBJC_ARC_UNAVAILABLE;
@property(readonly, copy) NSString* description;
@end

// NSObject.h.
@protocol NSCopying
- (id)copyWithZone:(NSZone*)zone;
@end

// objc/NSObject.h: the root class. Apple declares exactly one ivar; the emulation's
// runtime relies on that layout (the compiler fixes ivar offsets from this declaration).
__attribute__((objc_root_class))
@interface NSObject <NSObject> {
  Class isa;
}
+ (void)initialize;
- (instancetype)init;
+ (instancetype)new;
+ (instancetype)allocWithZone:(NSZone*)zone;
+ (instancetype)alloc;
- (void)dealloc;
- (id)copy;
+ (Class)class;
@end

// NSEnumerator.h: what `for (x in collection)` calls.
typedef struct {
  unsigned long state;
  id __unsafe_unretained* itemsPtr;
  unsigned long* mutationsPtr;
  unsigned long extra[5];
} NSFastEnumerationState;

@protocol NSFastEnumeration
- (NSUInteger)countByEnumeratingWithState:(NSFastEnumerationState*)state
                                  objects:(id __unsafe_unretained[])buffer
                                    count:(NSUInteger)len;
@end

// NSString.h. NSString is a class cluster: these are its primitive and convenience
// methods; instances are of private subclasses.
@interface NSString : NSObject <NSCopying>
@property(readonly) NSUInteger length;
@property(readonly) const char* UTF8String NS_RETURNS_INNER_POINTER;
- (instancetype)initWithUTF8String:(const char*)nullTerminatedCString;
+ (instancetype)stringWithUTF8String:(const char*)nullTerminatedCString;
- (BOOL)isEqualToString:(NSString*)aString;
@end

// NSArray.h.
@interface NSArray<__covariant ObjectType> : NSObject <NSCopying, NSFastEnumeration>
@property(readonly) NSUInteger count;
- (ObjectType)objectAtIndex:(NSUInteger)index;
+ (instancetype)arrayWithObjects:(const ObjectType[])objects count:(NSUInteger)cnt;
@property(readonly, nonatomic) ObjectType firstObject;
- (ObjectType)objectAtIndexedSubscript:(NSUInteger)idx;
@end

// NSDictionary.h.
@interface NSDictionary<KeyType, __covariant ObjectType> : NSObject <NSCopying>
@property(readonly) NSUInteger count;
- (ObjectType)objectForKey:(KeyType)aKey;
+ (instancetype)dictionaryWithObjects:(const ObjectType[])objects
                              forKeys:(const KeyType<NSCopying>[])keys
                                count:(NSUInteger)cnt;
- (ObjectType)objectForKeyedSubscript:(KeyType)key;
@end

// NSError.h.
typedef NSString* NSErrorDomain;
typedef NSString* NSErrorUserInfoKey;
extern "C" NSErrorUserInfoKey const NSLocalizedDescriptionKey;

@interface NSError : NSObject <NSCopying>
+ (instancetype)errorWithDomain:(NSErrorDomain)domain
                           code:(NSInteger)code
                       userInfo:(NSDictionary<NSErrorUserInfoKey, id>*)dict;
@property(readonly, copy) NSErrorDomain domain;
@property(readonly) NSInteger code;
@property(readonly, copy) NSDictionary<NSErrorUserInfoKey, id>* userInfo;
@property(readonly, copy) NSString* localizedDescription;
@end

#endif  // TFMPS_STUB_FOUNDATION_H_
