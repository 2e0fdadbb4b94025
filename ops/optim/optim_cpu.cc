// CPU backend of the optim family: one pass over memory per element, vectorizable
// inner loops, work spread over the caller's thread pool in fixed-size chunks that
// cut across variables (100 small tensors and one large one balance alike).
//
// Built with -fno-math-errno (vectorized sqrt) and -ffp-contract=off: Keras rounds
// every operation separately, and matching it means never fusing a*b+c.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "ops/optim/optim.h"

namespace tfmps {
namespace optim {
namespace {

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

// The gradient options of MPSNNOptimizerDescriptor, in T.
template <typename T>
struct GradOptions {
  explicit GradOptions(const GradientTransform& t)
      : rescale(T(t.rescale)), clip(t.clip), lo(T(t.clip_min)), hi(T(t.clip_max)),
        l1(t.regularization == Regularization::kL1), l2(t.regularization == Regularization::kL2),
        scale(T(t.regularization_scale)) {}
  T rescale;
  bool clip;
  T lo, hi;
  bool l1, l2;
  T scale;

  // NaN gradients stay NaN through the clip (IEEE: comparisons with NaN are false).
  inline T operator()(T g, T w) const {
    if (clip) g = g < lo ? lo : (g > hi ? hi : g);
    g = g * rescale;
    if (l1) g = g + scale * T((w > T(0)) - (w < T(0)));
    if (l2) g = g + scale * w;
    return g;
  }
};

// Reads the gradient, transformed or not. kTransform is a template argument so the
// common identity case compiles to a plain load in a vectorized loop.
template <bool kTransform, typename T>
inline T Grad(const GradOptions<T>& o, T g, T w) {
  return kTransform ? o(g, w) : g;
}

// Keras's ops.cast(python_float, dtype) converts the Python float to floatx (float32)
// before casting: in float64, Keras's SGD momentum and Adam's power bases are the
// float32-rounded values. Keras semantics repeats that rounding.
template <typename T>
inline T KerasCast(double x) {
  return T(static_cast<float>(x));
}

// max that propagates a NaN in either argument, like tf.maximum.
template <typename T>
inline T NanMax(T a, T b) {
  return (a != a || b != b) ? a + b : (a > b ? a : b);
}

// ---------------------------------------------------------------------------- Adam
template <bool kTransform, bool kAmsgrad, bool kKeras, bool kSq, typename T>
void AdamChunk(const AdamSlots<T>& s, int64_t b, int64_t e, T alpha, T beta1, T beta2,
               T omb1, T omb2, T eps, const GradOptions<T>& o) {
  T* __restrict w = s.var;
  T* __restrict m = s.m;
  T* __restrict v = s.v;
  T* __restrict vh = s.vhat;
  const T* __restrict gr = s.grad;
  const T* __restrict gsq = s.grad_sq;
  for (int64_t i = b; i < e; ++i) {
    const T g = Grad<kTransform>(o, gr[i], w[i]);
    const T g2 = kSq ? gsq[i] : g * g;
    T mi, vi;
    if (kKeras) {
      mi = m[i] + (g - m[i]) * omb1;
      vi = v[i] + (g2 - v[i]) * omb2;
    } else {
      mi = beta1 * m[i] + omb1 * g;
      vi = beta2 * v[i] + omb2 * g2;
    }
    m[i] = mi;
    v[i] = vi;
    if (kAmsgrad) {
      vi = NanMax(vh[i], vi);
      vh[i] = vi;
    }
    if (kKeras) {
      w[i] = w[i] - (mi * alpha) / (std::sqrt(vi) + eps);
    } else {
      w[i] = w[i] - alpha * mi / (std::sqrt(vi) + eps);
    }
  }
}

template <bool kTransform, bool kAmsgrad, bool kKeras, bool kSq, typename T>
void AdamAll(const AdamParams& p, const std::vector<AdamSlots<T>>& vars, const ParallelFor& parallel) {
  // alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t): in T from float32-cast betas as
  // Keras does; in double for MPS, whose beta1/beta2 properties are double.
  T alpha;
  if (kKeras) {
    const T t = T(p.step);
    const T b1p = std::pow(KerasCast<T>(p.beta1), t);
    const T b2p = std::pow(KerasCast<T>(p.beta2), t);
    alpha = T(p.lr) * std::sqrt(T(1) - b2p) / (T(1) - b1p);
  } else {
    const double t = static_cast<double>(p.step);
    alpha = T(p.lr * std::sqrt(1.0 - std::pow(p.beta2, t)) / (1.0 - std::pow(p.beta1, t)));
  }
  const T omb1 = T(1.0 - p.beta1), omb2 = T(1.0 - p.beta2);
  const GradOptions<T> o(p.gradient);
  RunUnits(vars, kAdamCycles, parallel, [&](const AdamSlots<T>& s, int64_t b, int64_t e) {
    AdamChunk<kTransform, kAmsgrad, kKeras, kSq, T>(s, b, e, alpha, T(p.beta1), T(p.beta2), omb1,
                                               omb2, T(p.epsilon), o);
  });
}

// ----------------------------------------------------------------------------- SGD
template <bool kTransform, int kMode /*0 plain, 1 momentum, 2 nesterov*/, bool kKeras, typename T>
void SgdChunk(const SgdSlots<T>& s, int64_t b, int64_t e, T lr, T mu, const GradOptions<T>& o) {
  T* __restrict w = s.var;
  T* __restrict m = s.momentum;
  const T* __restrict gr = s.grad;
  for (int64_t i = b; i < e; ++i) {
    const T g = Grad<kTransform>(o, gr[i], w[i]);
    if (kMode == 0) {
      w[i] = kKeras ? w[i] - g * lr : w[i] - lr * g;
    } else if (kKeras) {
      const T mi = m[i] * mu - g * lr;
      m[i] = mi;
      w[i] = kMode == 2 ? w[i] + (mi * mu - g * lr) : w[i] + mi;
    } else if (kMode == 1) {
      const T mi = mu * m[i] + lr * g;
      m[i] = mi;
      w[i] = w[i] - mi;
    } else {
      const T mi = mu * m[i] + g;
      m[i] = mi;
      w[i] = w[i] - lr * (g + mu * mi);
    }
  }
}

template <bool kTransform, int kMode, bool kKeras, typename T>
void SgdAll(const SgdParams& p, const std::vector<SgdSlots<T>>& vars, const ParallelFor& parallel) {
  const GradOptions<T> o(p.gradient);
  const T lr = T(p.lr), mu = kKeras ? KerasCast<T>(p.momentum) : T(p.momentum);
  RunUnits(vars, kSgdCycles, parallel, [&](const SgdSlots<T>& s, int64_t b, int64_t e) {
    SgdChunk<kTransform, kMode, kKeras, T>(s, b, e, lr, mu, o);
  });
}

// ------------------------------------------------------------------------- RMSProp
template <bool kTransform, bool kCentered, bool kMomentum, bool kKeras, bool kSq, typename T>
void RmsPropChunk(const RmsPropSlots<T>& s, int64_t b, int64_t e, T lr, T rho, T omr, T mu,
                  T eps, const GradOptions<T>& o) {
  T* __restrict w = s.var;
  T* __restrict ms = s.ms;
  T* __restrict mg = s.mg;
  T* __restrict mom = s.mom;
  const T* __restrict gr = s.grad;
  const T* __restrict gsq = s.grad_sq;
  for (int64_t i = b; i < e; ++i) {
    const T g = Grad<kTransform>(o, gr[i], w[i]);
    const T si = rho * ms[i] + omr * (kSq ? gsq[i] : g * g);
    ms[i] = si;
    T d;
    if (kCentered) {
      const T ai = rho * mg[i] + omr * g;
      mg[i] = ai;
      d = kKeras ? (si - ai * ai) + eps : std::sqrt(si - ai * ai) + eps;
    } else {
      d = kKeras ? si + eps : std::sqrt(si) + eps;
    }
    const T inc = kKeras ? (lr * g) / std::sqrt(d) : (lr * g) / d;
    if (kMomentum) {
      const T mi = mu * mom[i] + inc;
      mom[i] = mi;
      w[i] = w[i] - mi;
    } else {
      w[i] = w[i] - inc;
    }
  }
}

template <bool kTransform, bool kCentered, bool kMomentum, bool kKeras, bool kSq, typename T>
void RmsPropAll(const RmsPropParams& p, const std::vector<RmsPropSlots<T>>& vars,
                const ParallelFor& parallel) {
  const GradOptions<T> o(p.gradient);
  const T lr = T(p.lr), rho = T(p.rho), omr = T(1.0 - p.rho), mu = T(p.momentum),
          eps = T(p.epsilon);
  RunUnits(vars, kRmsPropCycles, parallel, [&](const RmsPropSlots<T>& s, int64_t b, int64_t e) {
    RmsPropChunk<kTransform, kCentered, kMomentum, kKeras, kSq, T>(s, b, e, lr, rho, omr, mu, eps, o);
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
      [&](auto tr, auto ams, auto keras, auto sq) {
        AdamAll<decltype(tr)::value, decltype(ams)::value, decltype(keras)::value, decltype(sq)::value, T>(
            p, vars, parallel);
      },
      !p.gradient.is_identity(), p.amsgrad, p.semantics == Semantics::kKeras, p.grad_sq);
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
      [&](auto tr, auto centered, auto mom, auto keras, auto sq) {
        RmsPropAll<decltype(tr)::value, decltype(centered)::value, decltype(mom)::value,
                   decltype(keras)::value, decltype(sq)::value, T>(p, vars, parallel);
      },
      !p.gradient.is_identity(), p.centered, p.use_momentum, p.semantics == Semantics::kKeras,
      p.grad_sq);
}

template void AdamCpu<float>(const AdamParams&, const std::vector<AdamSlots<float>>&, const ParallelFor&);
template void AdamCpu<double>(const AdamParams&, const std::vector<AdamSlots<double>>&, const ParallelFor&);
template void SgdCpu<float>(const SgdParams&, const std::vector<SgdSlots<float>>&, const ParallelFor&);
template void SgdCpu<double>(const SgdParams&, const std::vector<SgdSlots<double>>&, const ParallelFor&);
template void RmsPropCpu<float>(const RmsPropParams&, const std::vector<RmsPropSlots<float>>&, const ParallelFor&);
template void RmsPropCpu<double>(const RmsPropParams&, const std::vector<RmsPropSlots<double>>&, const ParallelFor&);

}  // namespace optim
}  // namespace tfmps
