// Fused CPU kernels for SML's transfer f_Θ (see sml_torchrec/modules/transfer_cpu.py).
//
// The stack + conv1 + conv2 stage is a per-column map R^3 -> R^n1 -> R^n2 with an activation
// after each layer. Done as separate tensor ops it streams n1 + n2 full [B, d] planes through
// memory several times; here each vector of columns goes through the whole stage in registers.
// The backward either recomputes the stage (when its parameters need gradients) or, when only
// `new` does (SML step 1), uses the derivative the forward took in forward mode.
//
// All activations are silu on pre-scaled inputs: the Python side folds the 1.702 of the
// authors' GELU approximation x*sigmoid(1.702x) into the weights (silu(s*x) = s*gelu_s(x)).
// Shapes: prev, neww, out rows [B, d]; f1 [n1, 3] (already scaled by s); f2 [n2, n1];
// h2 [B, n2*d] with row layout k*d + m (the flatten order of fc1's input).

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();
constexpr int64_t kMaxChannels = 16;
constexpr int64_t kRowGrain = 16;
constexpr int64_t kN1 = 10, kN2 = 5;  // TransferConfig's defaults (the paper's)

#if defined(CPU_CAPABILITY_AVX512)
// exp(-u) in 13 instructions where ATen's exp_u20 takes 19: x = -u clamped to [-110, 100]
// (exp is 0 / inf beyond; the clamp keeps n * ln2_hi exact, and min/max with x second keep
// NaN), n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts), exp(r) by exp_u20's
// degree-5 polynomial, and scalef multiplies by 2^n with IEEE overflow and underflow. The
// stage kernels spend most of their time here; relative error ~2e-7 (exp_u20: ~4e-7).
inline Vec exp_neg(const Vec& u) {
  __m512 x = _mm512_sub_ps(_mm512_setzero_ps(), u);
  x = _mm512_max_ps(_mm512_set1_ps(-110.f), _mm512_min_ps(_mm512_set1_ps(100.f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.00828929059f), _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.999999701f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.f));
  return Vec(_mm512_scalef_ps(p, n));
}
#else
inline Vec exp_neg(const Vec& u) { return u.neg().exp_u20(); }
#endif
inline Vec sigmoid(const Vec& u) { return Vec(1.f) / (Vec(1.f) + exp_neg(u)); }
inline Vec silu(const Vec& u) { return u / (Vec(1.f) + exp_neg(u)); }
// d/du silu(u) = s + u s (1 - s), s = sigmoid(u)
inline Vec silu_grad_from(const Vec& u, const Vec& s) {
  return s * (Vec(1.f) + u * (Vec(1.f) - s));
}
inline Vec load(const float* p, int64_t w) { return w == kW ? Vec::loadu(p) : Vec::loadu(p, w); }
inline void store(const Vec& v, float* p, int64_t w) {
  if (w == kW) v.store(p); else v.store(p, w);
}
inline Vec fma(const Vec& a, const Vec& b, const Vec& c) { return at::vec::fmadd(a, b, c); }

float reduce(const Vec& v) {
  float lanes[kW];
  v.store(lanes);
  float s = 0.f;
  for (int64_t i = 0; i < kW; ++i) s += lanes[i];
  return s;
}

// 1 / (||p|| + eps) for one row: w_dot = prev * new * inv_norm.
float inv_norm(const float* p, int64_t d, double eps) {
  Vec acc(0.f);
  int64_t m = 0;
  for (; m + kW <= d; m += kW) { const Vec x = Vec::loadu(p + m); acc = fma(x, x, acc); }
  float ss = reduce(acc);
  for (; m < d; ++m) ss += p[m] * p[m];
  return static_cast<float>(1.0 / (std::sqrt(static_cast<double>(ss)) + eps));
}

// conv1's pre-activation for filter f (3 taps) over the stacked columns x0, x1, x2.
inline Vec conv1(const float* f, const Vec& x0, const Vec& x1, const Vec& x2) {
  return fma(Vec(f[0]), x0, fma(Vec(f[1]), x1, Vec(f[2]) * x2));
}

// conv2's pre-activation for filter f (n1 taps) over h1[0..n1).
inline Vec conv2(const float* f, const Vec* h1, int64_t n1) {
  Vec acc = Vec(f[0]) * h1[0];
  for (int64_t k = 1; k < n1; ++k) acc = fma(Vec(f[k]), h1[k], acc);
  return acc;
}

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 &&
                  t.is_contiguous(),
              name, " must be a contiguous 2-D float32 CPU tensor");
}

void check_filters(const at::Tensor& f1, const at::Tensor& f2) {
  check_rows(f1, "f1");
  check_rows(f2, "f2");
  TORCH_CHECK(f1.size(1) == 3 && f2.size(1) == f1.size(0), "f1 must be [n1, 3], f2 [n2, n1]");
  TORCH_CHECK(f1.size(0) <= kMaxChannels && f2.size(0) <= kMaxChannels,
              "the fused CPU transfer supports at most ", kMaxChannels, " conv channels");
}

}  // namespace

// The stage over rows [b0, b1). N1, N2 > 0 fix the channel counts at compile time (the default
// config): the loops over channels unroll and the per-channel vectors stay in registers;
// 0 reads them from n1_, n2_. With J non-null also writes, per output, its derivative with
// respect to the Ŵ slot of the stack (w_dot held constant): J[b, j*d + m] = ∂h2[b, j*d + m] /
// ∂new[b, m], forward mode, so a backward that needs the gradient of `new` only is one
// multiply-add per h2 entry instead of a recomputed stage.
template <int64_t N1, int64_t N2>
void stage_forward_rows(const float* P, const float* N, const float* F1, const float* F2,
                        float* O, float* J, int64_t b0, int64_t b1, int64_t d, int64_t n1_,
                        int64_t n2_, double eps) {
  const int64_t n1 = N1 ? N1 : n1_, n2 = N2 ? N2 : n2_;
  Vec h1[N1 ? N1 : kMaxChannels], t1[N1 ? N1 : kMaxChannels];
  for (int64_t b = b0; b < b1; ++b) {
    const float* p = P + b * d;
    const float* n = N + b * d;
    float* o = O + b * n2 * d;
    const Vec inv(inv_norm(p, d, eps));
    for (int64_t m = 0; m < d; m += kW) {
      const int64_t w = std::min(kW, d - m);
      const Vec x0 = load(p + m, w), x1 = load(n + m, w);
      const Vec x2 = x0 * x1 * inv;
      if (J == nullptr) {
        for (int64_t k = 0; k < n1; ++k) h1[k] = silu(conv1(F1 + 3 * k, x0, x1, x2));
        for (int64_t j = 0; j < n2; ++j)
          store(silu(conv2(F2 + j * n1, h1, n1)), o + j * d + m, w);
        continue;
      }
      float* jv = J + b * n2 * d;
      for (int64_t k = 0; k < n1; ++k) {
        const Vec u1 = conv1(F1 + 3 * k, x0, x1, x2), s1 = sigmoid(u1);
        h1[k] = u1 * s1;
        t1[k] = Vec(F1[3 * k + 1]) * silu_grad_from(u1, s1);  // ∂h1[k] / ∂new
      }
      for (int64_t j = 0; j < n2; ++j) {
        const Vec u2 = conv2(F2 + j * n1, h1, n1), s2 = sigmoid(u2);
        store(u2 * s2, o + j * d + m, w);
        store(silu_grad_from(u2, s2) * conv2(F2 + j * n1, t1, n1), jv + j * d + m, w);
      }
    }
  }
}

// h2 (= out, [B, n2*d]) = silu(f2 @ silu(f1 @ [prev; neww; w_dot])) column by column; with a
// defined jvp ([B, n2*d]) also ∂h2/∂new entry by entry (see stage_forward_rows).
void stage_forward(const at::Tensor& prev, const at::Tensor& neww, const at::Tensor& f1,
                   const at::Tensor& f2, double eps, at::Tensor out,
                   const c10::optional<at::Tensor>& jvp) {
  check_rows(prev, "prev");
  check_rows(neww, "new");
  check_filters(f1, f2);
  const int64_t B = prev.size(0), d = prev.size(1), n1 = f1.size(0), n2 = f2.size(0);
  TORCH_CHECK(neww.sizes() == prev.sizes(), "prev and new must have the same shape");
  check_rows(out, "out");
  TORCH_CHECK(out.size(0) == B && out.size(1) == n2 * d, "out must be [B, n2*d]");
  float* JV = nullptr;
  if (jvp.has_value()) {
    check_rows(*jvp, "jvp");
    TORCH_CHECK(jvp->sizes() == out.sizes(), "jvp must be [B, n2*d]");
    JV = jvp->data_ptr<float>();
  }
  const float* P = prev.data_ptr<float>();
  const float* N = neww.data_ptr<float>();
  const float* F1 = f1.data_ptr<float>();
  const float* F2 = f2.data_ptr<float>();
  float* O = out.data_ptr<float>();
  at::parallel_for(0, B, kRowGrain, [&](int64_t b0, int64_t b1) {
    if (n1 == kN1 && n2 == kN2) {
      stage_forward_rows<kN1, kN2>(P, N, F1, F2, O, JV, b0, b1, d, n1, n2, eps);
    } else {
      stage_forward_rows<0, 0>(P, N, F1, F2, O, JV, b0, b1, d, n1, n2, eps);
    }
  });
}

// grad_new [B, d] from grad_h2 and the forward's jvp (both [B, n2*d]):
// grad_new[b, m] = sum_j grad_h2[b, j*d + m] * jvp[b, j*d + m].
at::Tensor stage_grad_new(const at::Tensor& grad_h2, const at::Tensor& jvp, int64_t d) {
  check_rows(grad_h2, "grad_h2");
  check_rows(jvp, "jvp");
  TORCH_CHECK(jvp.sizes() == grad_h2.sizes() && d > 0 && grad_h2.size(1) % d == 0,
              "grad_h2 and jvp must both be [B, n2*d]");
  const int64_t B = grad_h2.size(0), n2 = grad_h2.size(1) / d;
  at::Tensor grad_new = at::empty({B, d}, grad_h2.options());
  const float* G = grad_h2.data_ptr<float>();
  const float* JV = jvp.data_ptr<float>();
  float* GN = grad_new.data_ptr<float>();
  at::parallel_for(0, B, 4 * kRowGrain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* g = G + b * n2 * d;
      const float* jv = JV + b * n2 * d;
      for (int64_t m = 0; m < d; m += kW) {
        const int64_t w = std::min(kW, d - m);
        Vec acc = load(g + m, w) * load(jv + m, w);
        for (int64_t j = 1; j < n2; ++j)
          acc = fma(load(g + j * d + m, w), load(jv + j * d + m, w), acc);
        store(acc, GN + b * d + m, w);
      }
    }
  });
  return grad_new;
}

// The stage's backward over rows [b0, b1); N1, N2 as in stage_forward_rows. Adds this range's
// parameter-gradient sums to mine[0 .. n1*3 + n2*n1) and, with GN non-null, writes new's
// gradient.
template <int64_t N1, int64_t N2>
void stage_backward_rows(const float* G, const float* P, const float* N, const float* F1,
                         const float* F2, float* GN, int64_t b0, int64_t b1, int64_t d,
                         int64_t n1_, int64_t n2_, double eps, double* mine) {
  const int64_t n1 = N1 ? N1 : n1_, n2 = N2 ? N2 : n2_;
  constexpr int64_t C = N1 ? std::max(N1, N2) : kMaxChannels;
  Vec u1[C], s1[C], h1[C], g2[C];
  std::vector<Vec> a1(n1 * 3, Vec(0.f));
  std::vector<Vec> a2(n2 * n1, Vec(0.f));
  for (int64_t b = b0; b < b1; ++b) {
    const float* p = P + b * d;
    const float* n = N + b * d;
    const float* g = G + b * n2 * d;
    const Vec inv(inv_norm(p, d, eps));
    for (int64_t m = 0; m < d; m += kW) {
      const int64_t w = std::min(kW, d - m);
      // Lanes past d load as zeros and contribute nothing to the parameter sums.
      const Vec x0 = load(p + m, w), x1 = load(n + m, w);
      const Vec x2 = x0 * x1 * inv;
      for (int64_t k = 0; k < n1; ++k) {
        u1[k] = conv1(F1 + 3 * k, x0, x1, x2);
        s1[k] = sigmoid(u1[k]);
        h1[k] = u1[k] * s1[k];
      }
      for (int64_t j = 0; j < n2; ++j) {
        const Vec u2 = conv2(F2 + j * n1, h1, n1);
        g2[j] = load(g + j * d + m, w) * silu_grad_from(u2, sigmoid(u2));
      }
      Vec gn(0.f);
      for (int64_t k = 0; k < n1; ++k) {
        Vec gh1 = Vec(F2[k]) * g2[0];
        for (int64_t j = 1; j < n2; ++j) gh1 = fma(Vec(F2[j * n1 + k]), g2[j], gh1);
        const Vec g1 = gh1 * silu_grad_from(u1[k], s1[k]);
        gn = fma(Vec(F1[3 * k + 1]), g1, gn);
        a1[3 * k] = fma(g1, x0, a1[3 * k]);
        a1[3 * k + 1] = fma(g1, x1, a1[3 * k + 1]);
        a1[3 * k + 2] = fma(g1, x2, a1[3 * k + 2]);
        for (int64_t j = 0; j < n2; ++j) a2[j * n1 + k] = fma(g2[j], h1[k], a2[j * n1 + k]);
      }
      if (GN) store(gn, GN + b * d + m, w);
    }
  }
  for (int64_t i = 0; i < n1 * 3; ++i) mine[i] += reduce(a1[i]);
  for (int64_t i = 0; i < n2 * n1; ++i) mine[n1 * 3 + i] += reduce(a2[i]);
}

// Gradients of the stage given grad_h2 [B, n2*d]: (grad_new [B, d], or undefined without
// need_input; grad_f1 [n1, 3]; grad_f2 [n2, n1]). w_dot is a constant (as in the authors'
// code), so grad_new flows only through the Ŵ slot of the stack. When only grad_new is
// needed, stage_forward's jvp and stage_grad_new do it without the recompute.
std::vector<at::Tensor> stage_backward(const at::Tensor& grad_h2, const at::Tensor& prev,
                                       const at::Tensor& neww, const at::Tensor& f1,
                                       const at::Tensor& f2, double eps, bool need_input) {
  check_rows(prev, "prev");
  check_rows(neww, "new");
  check_rows(grad_h2, "grad_h2");
  check_filters(f1, f2);
  const int64_t B = prev.size(0), d = prev.size(1), n1 = f1.size(0), n2 = f2.size(0);
  TORCH_CHECK(grad_h2.size(0) == B && grad_h2.size(1) == n2 * d, "grad_h2 must be [B, n2*d]");
  at::Tensor grad_new;
  if (need_input) grad_new = at::empty_like(neww);
  // Per-thread partial sums, added up in thread order afterwards: at::parallel_for gives each
  // thread a fixed range, so the parameter gradients are bit-reproducible for a thread count.
  const int64_t np = n1 * 3 + n2 * n1;
  std::vector<double> partial(at::get_num_threads() * np, 0.0);
  const float* G = grad_h2.data_ptr<float>();
  const float* P = prev.data_ptr<float>();
  const float* N = neww.data_ptr<float>();
  const float* F1 = f1.data_ptr<float>();
  const float* F2 = f2.data_ptr<float>();
  float* GN = need_input ? grad_new.data_ptr<float>() : nullptr;
  at::parallel_for(0, B, kRowGrain, [&](int64_t b0, int64_t b1) {
    double* mine = partial.data() + at::get_thread_num() * np;
    if (n1 == kN1 && n2 == kN2) {
      stage_backward_rows<kN1, kN2>(G, P, N, F1, F2, GN, b0, b1, d, n1, n2, eps, mine);
    } else {
      stage_backward_rows<0, 0>(G, P, N, F1, F2, GN, b0, b1, d, n1, n2, eps, mine);
    }
  });
  std::vector<double> total(np, 0.0);
  for (size_t t = 0; t < partial.size(); t += np)
    for (int64_t i = 0; i < np; ++i) total[i] += partial[t + i];
  at::Tensor grad_f1 = at::empty({n1, 3}, f1.options());
  at::Tensor grad_f2 = at::empty({n2, n1}, f2.options());
  for (int64_t i = 0; i < n1 * 3; ++i) grad_f1.data_ptr<float>()[i] = static_cast<float>(total[i]);
  for (int64_t i = 0; i < n2 * n1; ++i)
    grad_f2.data_ptr<float>()[i] = static_cast<float>(total[n1 * 3 + i]);
  return {grad_new, grad_f1, grad_f2};
}

namespace {
// x = u + bias on every row. With Z null: u <- silu(x) (no-grad use). Otherwise Z <- silu(x)
// and u <- scale * silu'(x), silu'(x) = sig + silu(x) * (1 - sig): all the backward needs of
// this layer is one multiply by u.
void bias_silu_rows(const at::Tensor& u, const at::Tensor& bias, float* Z, float scale) {
  check_rows(u, "u");
  TORCH_CHECK(bias.is_contiguous() && bias.scalar_type() == at::kFloat &&
                  bias.numel() == u.size(1), "bias must be a contiguous float32 [H]");
  const int64_t B = u.size(0), H = u.size(1);
  float* U = u.data_ptr<float>();
  const float* C = bias.data_ptr<float>();
  const Vec c(scale);
  at::parallel_for(0, B, kRowGrain, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0 * H; i < b1 * H; i += H) {
      for (int64_t m = 0; m < H; m += kW) {
        const int64_t w = std::min(kW, H - m);
        const Vec x = load(U + i + m, w) + load(C + m, w);
        const Vec sig = sigmoid(x), z = x * sig;
        if (Z) {
          store(c * fma(z, Vec(1.f) - sig, sig), U + i + m, w);
          store(z, Z + i + m, w);
        } else {
          store(z, U + i + m, w);
        }
      }
    }
  });
}
}  // namespace

// For the autograd forward: returns silu(u + bias) and leaves scale * silu'(u + bias) in u.
at::Tensor bias_silu_keep_grad(at::Tensor u, const at::Tensor& bias, double scale) {
  check_rows(u, "u");
  at::Tensor z = at::empty_like(u);
  bias_silu_rows(u, bias, z.data_ptr<float>(), static_cast<float>(scale));
  return z;
}

// out[:] = f(prev, new) over all rows, no autograd. Chunks of `chunk` rows run concurrently,
// one chunk per thread at a time, each with single-threaded GEMMs (nested inside the parallel
// region): small GEMMs scale better across chunks than within one. f1 and b1 come scaled by
// the GELU constant s, and alpha = 1/s (see the file comment).
void materialize_(const at::Tensor& prev, const at::Tensor& neww, const at::Tensor& f1,
                  const at::Tensor& f2, const at::Tensor& w1, const at::Tensor& b1,
                  const at::Tensor& w2, const at::Tensor& b2, double eps, double alpha,
                  at::Tensor out, int64_t chunk) {
  check_rows(prev, "prev");
  check_rows(out, "out");
  TORCH_CHECK(chunk > 0 && out.sizes() == prev.sizes(), "out must be prev's shape");
  const int64_t B = prev.size(0), d = prev.size(1), n2 = f2.size(0), H = w1.size(0);
  const int64_t chunks = (B + chunk - 1) / chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    const int64_t rows = std::min(chunk, B);
    at::Tensor h2 = at::empty({rows, n2 * d}, prev.options());
    at::Tensor z = at::empty({rows, H}, prev.options());
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * chunk, r = std::min(chunk, B - r0);
      at::Tensor h = h2.narrow(0, 0, r), zc = z.narrow(0, 0, r);
      stage_forward(prev.narrow(0, r0, r), neww.narrow(0, r0, r), f1, f2, eps, h, c10::nullopt);
      at::mm_out(zc, h, w1.t());
      bias_silu_rows(zc, b1, nullptr, 1.f);
      at::Tensor o = out.narrow(0, r0, r);
      at::addmm_out(o, b2, zc, w2.t(), 1.0, alpha);
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("stage_forward", &stage_forward);
  m.def("stage_grad_new", &stage_grad_new);
  m.def("stage_backward", &stage_backward);
  m.def("bias_silu_keep_grad", &bias_silu_keep_grad);
  m.def("materialize_", &materialize_);
}
