// CPU backend of the optim family: one pass over memory per element, vectorizable
// inner loops, work spread over the caller's thread pool in fixed-size chunks that
// cut across variables (100 small tensors and one large one balance alike).
//
// Built with -fno-math-errno (vectorized sqrt) and -ffp-contract=off: Keras rounds
// every operation separately, and matching it means never fusing a*b+c.
//
// Half and BFloat16 variables are computed the way TensorFlow's CPU kernels (Eigen's
// half and bfloat16) compute them, which is what Keras's update_step does on such a
// variable: each operation in float, rounded to the 16-bit type (nearest even) before
// the next. float's 24 bits are at least 2p+2 for both 16-bit formats (p = 11 and 8),
// so +, -, *, / and sqrt rounded this way are the correctly rounded 16-bit results.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "ops/optim/optim.h"

namespace tfmps {
namespace optim {
namespace {

// ------------------------------------------------------------- 16-bit arithmetic
inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// IEEE binary16 <-> float, round to nearest even; NaN -> the quiet NaN Eigen produces
// (0x7e00 with the sign), overflow -> Inf. Integer arithmetic only: the result must not
// depend on the thread's denormal (FTZ/DAZ) or rounding mode.
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return BitsFloat(sign | 0x7f800000u | (mant << 13));
  if (exp != 0) return BitsFloat(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return BitsFloat(sign);
  // Subnormal: mant * 2^-24, a normal float; normalize the mantissa by hand.
  int shift = 0;
  uint32_t m = mant;
  while ((m & 0x400u) == 0) {
    m <<= 1;
    ++shift;
  }
  return BitsFloat(sign | (static_cast<uint32_t>(113 - shift) << 23) | ((m & 0x3ffu) << 13));
}

inline uint16_t FloatToHalf(float f) {
  uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return sign | 0x7e00u;       // NaN
  if (x >= 0x477ff000u) return sign | 0x7c00u;      // >= 65520 (incl. Inf): rounds to Inf
  if (x >= 0x38800000u) {                           // normal half: exponent rebias 127 -> 15
    uint32_t h = (x >> 13) - (112u << 10);
    const uint32_t rest = x & 0x1fffu;
    h += (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ? 1u : 0u;  // carry may bump the exponent
    return sign | static_cast<uint16_t>(h);
  }
  if (x <= 0x33000000u) return sign;                // <= 2^-25: rounds to (signed) zero
  // Subnormal half: the value in units of 2^-24, rounded to nearest even.
  const uint32_t mant = (x & 0x7fffffu) | 0x800000u;
  const int shift = 126 - static_cast<int>(x >> 23);  // 14..24
  uint32_t q = mant >> shift;
  const uint32_t rest = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
  q += (rest > halfway || (rest == halfway && (q & 1u))) ? 1u : 0u;
  return sign | static_cast<uint16_t>(q);
}

inline float BFloat16ToFloat(uint16_t b) { return BitsFloat(static_cast<uint32_t>(b) << 16); }

inline uint16_t FloatToBFloat16(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (x & 0x80000000u) ? 0xffc0u : 0x7fc0u;  // NaN, as Eigen
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

template <typename S>
struct Codec;
template <>
struct Codec<Half> {
  static float Decode(Half h) { return HalfToFloat(h.bits); }
  static Half Encode(float f) { return Half{FloatToHalf(f)}; }
};
template <>
struct Codec<BFloat16> {
  static float Decode(BFloat16 b) { return BFloat16ToFloat(b.bits); }
  static BFloat16 Encode(float f) { return BFloat16{FloatToBFloat16(f)}; }
};

// A 16-bit value held as the float it is exactly; every operation rounds its float
// result back to S, as Eigen's half/bfloat16 operators do.
template <typename S>
struct Rounded {
  float f;
  static Rounded Of(float x) { return Rounded{Codec<S>::Decode(Codec<S>::Encode(x))}; }
  friend Rounded operator+(Rounded a, Rounded b) { return Of(a.f + b.f); }
  friend Rounded operator-(Rounded a, Rounded b) { return Of(a.f - b.f); }
  friend Rounded operator*(Rounded a, Rounded b) { return Of(a.f * b.f); }
  friend Rounded operator/(Rounded a, Rounded b) { return Of(a.f / b.f); }
  friend bool operator<(Rounded a, Rounded b) { return a.f < b.f; }
  friend bool operator>(Rounded a, Rounded b) { return a.f > b.f; }
  friend bool operator!=(Rounded a, Rounded b) { return a.f != b.f; }
};

// The type each storage type computes in, and the conversions between them. float and
// double compute in themselves (the conversions are no-ops and the loops vectorize).
template <typename S>
struct Arith {
  using type = S;
  static S Load(S x) { return x; }
  static S Store(S x) { return x; }
  // A double (a hyper-parameter Keras holds as a Python float) in S.
  static S FromDouble(double x) { return static_cast<S>(x); }
};
template <typename S>
struct Arith16 {
  using type = Rounded<S>;
  static type Load(S x) { return type{Codec<S>::Decode(x)}; }
  static S Store(type x) { return Codec<S>::Encode(x.f); }
  // Through float, as TensorFlow converts a Python float to a 16-bit tensor in eager
  // mode (Eigen's half(double) casts to float first) and as Keras's ops.cast does.
  static type FromDouble(double x) { return type::Of(static_cast<float>(x)); }
};
template <>
struct Arith<Half> : Arith16<Half> {};
template <>
struct Arith<BFloat16> : Arith16<BFloat16> {};

inline float Sqrt(float x) { return std::sqrt(x); }
inline double Sqrt(double x) { return std::sqrt(x); }
template <typename S>
inline Rounded<S> Sqrt(Rounded<S> x) { return Rounded<S>::Of(std::sqrt(x.f)); }
inline float Pow(float a, float b) { return std::pow(a, b); }
inline double Pow(double a, double b) { return std::pow(a, b); }
template <typename S>
inline Rounded<S> Pow(Rounded<S> a, Rounded<S> b) { return Rounded<S>::Of(std::pow(a.f, b.f)); }

constexpr int64_t kChunk = int64_t{1} << 15;  // elements per work unit (128 KB of float)

// Rough cycles per element, for the thread pool's split (relative sizes matter: Adam has
// a sqrt and a division, RMSProp one of each, SGD neither).
constexpr int64_t kAdamCycles = 12, kSgdCycles = 4, kRmsPropCycles = 10;

struct Unit {
  int64_t var, begin, end;
};

template <typename Slots>
std::vector<Unit> MakeUnits(const std::vector<Slots>& vars) {
  std::vector<Unit> units;
  for (int64_t i = 0; i < static_cast<int64_t>(vars.size()); ++i) {
    for (int64_t b = 0; b < vars[i].size; b += kChunk) {
      units.push_back({i, b, std::min(vars[i].size, b + kChunk)});
    }
  }
  return units;
}

template <typename Slots, typename Body>
void RunUnits(const std::vector<Slots>& vars, int64_t cycles_per_element,
              const ParallelFor& parallel, const Body& body) {
  const std::vector<Unit> units = MakeUnits(vars);
  if (units.empty()) return;
  int64_t elements = 0;
  for (const Unit& u : units) elements += u.end - u.begin;
  // The pool splits by cost: a list of tiny variables runs inline instead of paying
  // for a thread hand-off per unit.
  const int64_t cost_per_unit = elements / static_cast<int64_t>(units.size()) * cycles_per_element;
  parallel(static_cast<int64_t>(units.size()), std::max<int64_t>(cost_per_unit, 1),
           [&](int64_t first, int64_t last) {
             for (int64_t u = first; u < last; ++u) {
               const Unit& unit = units[u];
               body(vars[unit.var], unit.begin, unit.end);
             }
           });
}

// The gradient options of MPSNNOptimizerDescriptor (float32 values), in the arithmetic
// type T of the variables.
template <typename T, typename S>
struct GradOptions {
  explicit GradOptions(const GradientTransform& t)
      : rescale(Arith<S>::FromDouble(t.rescale)), clip(t.clip), lo(Arith<S>::FromDouble(t.clip_min)),
        hi(Arith<S>::FromDouble(t.clip_max)), l1(t.regularization == Regularization::kL1),
        l2(t.regularization == Regularization::kL2), scale(Arith<S>::FromDouble(t.regularization_scale)) {}
  T rescale;
  bool clip;
  T lo, hi;
  bool l1, l2;
  T scale;
  T zero = Arith<S>::FromDouble(0.0);

  // NaN gradients stay NaN through the clip (IEEE: comparisons with NaN are false).
  inline T operator()(T g, T w) const {
    if (clip) g = g < lo ? lo : (g > hi ? hi : g);
    g = g * rescale;
    // sign(w) as tf.sign and np.sign: NaN for a NaN weight (IEEE: NaN in, NaN out).
    if (l1) g = g + scale * (w != w ? w : Arith<S>::FromDouble((w > zero) - (w < zero)));
    if (l2) g = g + scale * w;
    return g;
  }
};

// Reads the gradient, transformed or not. kTransform is a template argument so the
// common identity case compiles to a plain load in a vectorized loop.
template <bool kTransform, typename T, typename S>
inline T Grad(const GradOptions<T, S>& o, T g, T w) {
  return kTransform ? o(g, w) : g;
}

// Keras's ops.cast(python_float, dtype) converts the Python float to floatx (float32)
// before casting: in float64, Keras's SGD momentum and Adam's power bases are the
// float32-rounded values. Keras semantics repeats that rounding.
template <typename S>
inline typename Arith<S>::type KerasCast(double x) {
  return Arith<S>::FromDouble(static_cast<float>(x));
}

// max that propagates a NaN in either argument, like tf.maximum.
template <typename T>
inline T NanMax(T a, T b) {
  return (a != a || b != b) ? a + b : (a > b ? a : b);
}

// Per-element loops: S is the storage type, T = Arith<S>::type the arithmetic type;
// values are loaded once, computed in T, stored once.

// ---------------------------------------------------------------------------- Adam
template <bool kTransform, bool kAmsgrad, bool kKeras, bool kSq, typename S>
void AdamChunk(const AdamSlots<S>& s, int64_t b, int64_t e, typename Arith<S>::type alpha,
               typename Arith<S>::type beta1, typename Arith<S>::type beta2, typename Arith<S>::type omb1,
               typename Arith<S>::type omb2, typename Arith<S>::type eps,
               const GradOptions<typename Arith<S>::type, S>& o) {
  using A = Arith<S>;
  using T = typename A::type;
  S* __restrict w = s.var;
  S* __restrict m = s.m;
  S* __restrict v = s.v;
  S* __restrict vh = s.vhat;
  const S* __restrict gr = s.grad;
  const S* __restrict gsq = s.grad_sq;
  for (int64_t i = b; i < e; ++i) {
    const T wi = A::Load(w[i]), m0 = A::Load(m[i]), v0 = A::Load(v[i]);
    const T g = Grad<kTransform>(o, A::Load(gr[i]), wi);
    const T g2 = kSq ? A::Load(gsq[i]) : g * g;
    T mi, vi;
    if (kKeras) {
      mi = m0 + (g - m0) * omb1;
      vi = v0 + (g2 - v0) * omb2;
    } else {
      mi = beta1 * m0 + omb1 * g;
      vi = beta2 * v0 + omb2 * g2;
    }
    m[i] = A::Store(mi);
    v[i] = A::Store(vi);
    if (kAmsgrad) {
      vi = NanMax(A::Load(vh[i]), vi);
      vh[i] = A::Store(vi);
    }
    if (kKeras) {
      w[i] = A::Store(wi - (mi * alpha) / (Sqrt(vi) + eps));
    } else {
      w[i] = A::Store(wi - alpha * mi / (Sqrt(vi) + eps));
    }
  }
}

template <bool kTransform, bool kAmsgrad, bool kKeras, typename S>
void AdamAll(const AdamParams& p, const std::vector<AdamSlots<S>>& vars, const ParallelFor& parallel) {
  using A = Arith<S>;
  using T = typename A::type;
  // alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t): in T from float32-cast betas as
  // Keras does (t = cast(step, T)); in double for MPS, whose beta1/beta2 are double.
  T alpha;
  if (kKeras) {
    const T t = A::FromDouble(static_cast<double>(p.step));
    const T b1p = Pow(KerasCast<S>(p.beta1), t);
    const T b2p = Pow(KerasCast<S>(p.beta2), t);
    const T one = A::FromDouble(1.0);
    alpha = A::FromDouble(p.lr) * Sqrt(one - b2p) / (one - b1p);
  } else {
    const double t = static_cast<double>(p.step);
    alpha = A::FromDouble(p.lr * std::sqrt(1.0 - std::pow(p.beta2, t)) / (1.0 - std::pow(p.beta1, t)));
  }
  const T omb1 = A::FromDouble(1.0 - p.beta1), omb2 = A::FromDouble(1.0 - p.beta2);
  const T beta1 = A::FromDouble(p.beta1), beta2 = A::FromDouble(p.beta2), eps = A::FromDouble(p.epsilon);
  const GradOptions<T, S> o(p.gradient);
  RunUnits(vars, kAdamCycles, parallel, [&](const AdamSlots<S>& s, int64_t b, int64_t e) {
    // grad_sq is per variable: sparse gradients bring one, dense ones do not.
    if (s.grad_sq != nullptr) {
      AdamChunk<kTransform, kAmsgrad, kKeras, true, S>(s, b, e, alpha, beta1, beta2, omb1, omb2, eps, o);
    } else {
      AdamChunk<kTransform, kAmsgrad, kKeras, false, S>(s, b, e, alpha, beta1, beta2, omb1, omb2, eps, o);
    }
  });
}

// ----------------------------------------------------------------------------- SGD
template <bool kTransform, int kMode /*0 plain, 1 momentum, 2 nesterov*/, bool kKeras, typename S>
void SgdChunk(const SgdSlots<S>& s, int64_t b, int64_t e, typename Arith<S>::type lr,
              typename Arith<S>::type mu, const GradOptions<typename Arith<S>::type, S>& o) {
  using A = Arith<S>;
  using T = typename A::type;
  S* __restrict w = s.var;
  S* __restrict m = s.momentum;
  const S* __restrict gr = s.grad;
  for (int64_t i = b; i < e; ++i) {
    const T wi = A::Load(w[i]);
    const T g = Grad<kTransform>(o, A::Load(gr[i]), wi);
    if (kMode == 0) {
      w[i] = A::Store(kKeras ? wi - g * lr : wi - lr * g);
    } else if (kKeras) {
      const T mi = A::Load(m[i]) * mu - g * lr;
      m[i] = A::Store(mi);
      w[i] = A::Store(kMode == 2 ? wi + (mi * mu - g * lr) : wi + mi);
    } else if (kMode == 1) {
      const T mi = mu * A::Load(m[i]) + lr * g;
      m[i] = A::Store(mi);
      w[i] = A::Store(wi - mi);
    } else {
      const T mi = mu * A::Load(m[i]) + g;
      m[i] = A::Store(mi);
      w[i] = A::Store(wi - lr * (g + mu * mi));
    }
  }
}

template <bool kTransform, int kMode, bool kKeras, typename S>
void SgdAll(const SgdParams& p, const std::vector<SgdSlots<S>>& vars, const ParallelFor& parallel) {
  using A = Arith<S>;
  using T = typename A::type;
  const GradOptions<T, S> o(p.gradient);
  const T lr = A::FromDouble(p.lr), mu = kKeras ? KerasCast<S>(p.momentum) : A::FromDouble(p.momentum);
  RunUnits(vars, kSgdCycles, parallel, [&](const SgdSlots<S>& s, int64_t b, int64_t e) {
    SgdChunk<kTransform, kMode, kKeras, S>(s, b, e, lr, mu, o);
  });
}

// ------------------------------------------------------------------------- RMSProp
template <bool kTransform, bool kCentered, bool kMomentum, bool kKeras, bool kSq, typename S>
void RmsPropChunk(const RmsPropSlots<S>& s, int64_t b, int64_t e, typename Arith<S>::type lr,
                  typename Arith<S>::type rho, typename Arith<S>::type omr, typename Arith<S>::type mu,
                  typename Arith<S>::type eps, const GradOptions<typename Arith<S>::type, S>& o) {
  using A = Arith<S>;
  using T = typename A::type;
  S* __restrict w = s.var;
  S* __restrict ms = s.ms;
  S* __restrict mg = s.mg;
  S* __restrict mom = s.mom;
  const S* __restrict gr = s.grad;
  const S* __restrict gsq = s.grad_sq;
  for (int64_t i = b; i < e; ++i) {
    const T wi = A::Load(w[i]);
    const T g = Grad<kTransform>(o, A::Load(gr[i]), wi);
    const T si = rho * A::Load(ms[i]) + omr * (kSq ? A::Load(gsq[i]) : g * g);
    ms[i] = A::Store(si);
    T d;
    if (kCentered) {
      const T ai = rho * A::Load(mg[i]) + omr * g;
      mg[i] = A::Store(ai);
      d = kKeras ? (si - ai * ai) + eps : Sqrt(si - ai * ai) + eps;
    } else {
      d = kKeras ? si + eps : Sqrt(si) + eps;
    }
    const T inc = kKeras ? (lr * g) / Sqrt(d) : (lr * g) / d;
    if (kMomentum) {
      const T mi = mu * A::Load(mom[i]) + inc;
      mom[i] = A::Store(mi);
      w[i] = A::Store(wi - mi);
    } else {
      w[i] = A::Store(wi - inc);
    }
  }
}

template <bool kTransform, bool kCentered, bool kMomentum, bool kKeras, typename S>
void RmsPropAll(const RmsPropParams& p, const std::vector<RmsPropSlots<S>>& vars,
                const ParallelFor& parallel) {
  using A = Arith<S>;
  using T = typename A::type;
  const GradOptions<T, S> o(p.gradient);
  const T lr = A::FromDouble(p.lr), rho = A::FromDouble(p.rho), omr = A::FromDouble(1.0 - p.rho),
          mu = A::FromDouble(p.momentum), eps = A::FromDouble(p.epsilon);
  RunUnits(vars, kRmsPropCycles, parallel, [&](const RmsPropSlots<S>& s, int64_t b, int64_t e) {
    if (s.grad_sq != nullptr) {
      RmsPropChunk<kTransform, kCentered, kMomentum, kKeras, true, S>(s, b, e, lr, rho, omr, mu, eps, o);
    } else {
      RmsPropChunk<kTransform, kCentered, kMomentum, kKeras, false, S>(s, b, e, lr, rho, omr, mu, eps, o);
    }
  });
}

// Calls f(std::integral_constant<bool, b>...) for runtime flags b..., so each combination
// of options gets its own branch-free loop.
template <typename F>
void WithFlags(F&& f) {
  f();
}
template <typename F, typename... Rest>
void WithFlags(F&& f, bool first, Rest... rest) {
  WithFlags(
      [&](auto... tail) {
        if (first) {
          f(std::true_type{}, tail...);
        } else {
          f(std::false_type{}, tail...);
        }
      },
      rest...);
}

}  // namespace

template <typename T>
void AdamCpu(const AdamParams& p, const std::vector<AdamSlots<T>>& vars, const ParallelFor& parallel) {
  WithFlags(
      [&](auto tr, auto ams, auto keras) {
        AdamAll<decltype(tr)::value, decltype(ams)::value, decltype(keras)::value, T>(p, vars, parallel);
      },
      !p.gradient.is_identity(), p.amsgrad, p.semantics == Semantics::kKeras);
}

template <typename T>
void SgdCpu(const SgdParams& p, const std::vector<SgdSlots<T>>& vars, const ParallelFor& parallel) {
  WithFlags(
      [&](auto tr, auto mom, auto nesterov, auto keras) {
        constexpr int kMode = !decltype(mom)::value ? 0 : (decltype(nesterov)::value ? 2 : 1);
        SgdAll<decltype(tr)::value, kMode, decltype(keras)::value, T>(p, vars, parallel);
      },
      !p.gradient.is_identity(), p.use_momentum, p.nesterov, p.semantics == Semantics::kKeras);
}

template <typename T>
void RmsPropCpu(const RmsPropParams& p, const std::vector<RmsPropSlots<T>>& vars,
                const ParallelFor& parallel) {
  WithFlags(
      [&](auto tr, auto centered, auto mom, auto keras) {
        RmsPropAll<decltype(tr)::value, decltype(centered)::value, decltype(mom)::value,
                   decltype(keras)::value, T>(p, vars, parallel);
      },
      !p.gradient.is_identity(), p.centered, p.use_momentum, p.semantics == Semantics::kKeras);
}

#define TFMPS_INSTANTIATE(T)                                                                          \
  template void AdamCpu<T>(const AdamParams&, const std::vector<AdamSlots<T>>&, const ParallelFor&); \
  template void SgdCpu<T>(const SgdParams&, const std::vector<SgdSlots<T>>&, const ParallelFor&);    \
  template void RmsPropCpu<T>(const RmsPropParams&, const std::vector<RmsPropSlots<T>>&, const ParallelFor&)
TFMPS_INSTANTIATE(Half);
TFMPS_INSTANTIATE(BFloat16);
TFMPS_INSTANTIATE(float);
TFMPS_INSTANTIATE(double);
#undef TFMPS_INSTANTIATE

}  // namespace optim
}  // namespace tfmps
