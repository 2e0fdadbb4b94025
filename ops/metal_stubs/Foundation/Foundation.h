// Declaration subset of Apple's Foundation and objc runtime headers, for type-checking
// only: tools/metal_typecheck.sh compiles ops/**/*.mm against it on Linux; macOS builds
// use the real SDK. Only what the .mm files use is declared, each name and type checked
// against Apple's documentation (developer.apple.com) and PyObjC's metadata. Add a
// declaration together with the code that needs it. Nullability annotations are left
// out on purpose: partial annotation would trip -Wnullability-completeness.
#ifndef TFMPS_STUB_FOUNDATION_H_
#define TFMPS_STUB_FOUNDATION_H_

// 64-bit Apple platforms (LP64): NSUInteger is unsigned long.
typedef unsigned long NSUInteger;

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

@protocol NSObject
@end

__attribute__((objc_root_class))
@interface NSObject <NSObject>
+ (instancetype)alloc;
- (instancetype)init;
@end

@interface NSString : NSObject
@property(readonly) const char* UTF8String NS_RETURNS_INNER_POINTER;
@end

@interface NSError : NSObject
@property(readonly, copy) NSString* localizedDescription;
@end

#endif  // TFMPS_STUB_FOUNDATION_H_
