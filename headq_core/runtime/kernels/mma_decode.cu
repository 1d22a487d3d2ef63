// Split-K decode attention over the packed cache on tensor cores (mma.sync m16n8k16, sm_80+),
// after mma_common.cuh.
//
// One warp is one split of one (batch row, KV head): it streams its tokens in CHUNK-token chunks
// through an NSTAGE-deep cp.async pipeline (only packed bytes travel) and unpacks every code
// straight into the register fragment the tensor cores read. Keys and values are the mma's A
// operand (16 tokens or 16 channels as rows), the query heads of the KV head its N columns:
//   logits^T = K_codes (q (.) s_g)^T + Z_g q^T   key scale folded into the query once per key
//                                                 group, zero-points as one more mma per chunk;
//                                                 the codes keep their unpacking offsets, removed
//                                                 by one more mma per key group
//            + C_side (sign U^T q)^T              HeadQ correction: one more k-step per 16 tokens
//   out^T    = V_codes^T (P (.) s_j)^T + Z_v^T P^T  value scale folded into the probabilities
// so the inner loops are only unpacking (prmt, lop3, sub.f16x2) and mma. Fragment channel and
// token orders are chosen so that each lane reads whole bytes of codes and adjacent scale pairs;
// they never reach memory. Logits are in base 2; mma_kernel.cu writes the result.

// An 8x8 fp16 matrix held as the m8n8 fragment (lane 4r + c: row r, cols 2c, 2c+1), transposed.
__device__ __forceinline__ u32 transpose8x8(u32 x) {
  u32 d; asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(d) : "r"(x)); return d;
}
// d += a * b: A [16 x 16] row-major fp16 (4 regs), B [16 x 8] col-major fp16 (2 regs), fp32 C/D
__device__ __forceinline__ void mma(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
               "{%8,%9}, {%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// prmt selector: byte ``k`` of word a into the low byte of the low half, byte ``k`` of word b
// into the low byte of the high half (the halves' high bytes are masked off afterwards).
__device__ __forceinline__ u32 pair_selector(int k) {
  return (u32)(k | (k << 4) | ((4 + k) << 8) | ((4 + k) << 12));
}
// As codes_at without the subtraction: 2^(10 - lo_pos) + code, 2^(10 - hi_pos) + code (exact).
__device__ __forceinline__ u32 biased_codes_at(u32 x, int bits, int lo_pos, int hi_pos) {
  const u32 low = (1u << bits) - 1u;
  return mask_or(x, (low << lo_pos) | (low << (16 + hi_pos)), MAGIC(lo_pos) | (MAGIC(hi_pos) << 16));
}
// -(2^(10 - lo_pos)), -(2^(10 - hi_pos)) as an fp16 pair: what biased_codes_at adds, negated.
#define NEG_BIAS(lo_pos, hi_pos) (MAGIC(lo_pos) | 0x8000u | ((MAGIC(hi_pos) | 0x8000u) << 16))
// Two signed 8-bit side codes (low bytes of the halves of x) as an exact fp16 pair.
__device__ __forceinline__ u32 int8_pair(u32 x) {
  const u32 bias = 0x64806480u;  // (1152, 1152): b -> 1024 + (b ^ 0x80)
  return hsub2(mask_xor(x, 0x00ff00ffu, bias), bias);
}

#define NT ((GQ + 7) / 8)                      // 8-head column tiles

// out[G] = (x[a][G], x[a + 1][G]) for the NGV fp16 values per token of rows a, a + 1 at ``row``.
__device__ __forceinline__ void token_pairs(const u16* row, u32 (&out)[NGV]) {
#if NGV == 1
  out[0] = *(const u32*)row;
#elif NGV == 2
  const uint2 v = *(const uint2*)row;
  out[0] = prmt(v.x, v.y, 0x5410u); out[1] = prmt(v.x, v.y, 0x7632u);
#else
  const uint4 v = *(const uint4*)row;
  out[0] = prmt(v.x, v.z, 0x5410u); out[1] = prmt(v.x, v.z, 0x7632u);
  out[2] = prmt(v.y, v.w, 0x5410u); out[3] = prmt(v.y, v.w, 0x7632u);
#endif
}

// Online-softmax state of one lane: columns are heads 8nt + 2t + e (e = 0, 1).
struct State {
  float m[NT][2];        // running column max (the same in the 8 lanes of a column)
  float l[NT][2];        // this lane's partial column sum
  float o[NT][8][4];     // out^T tiles m: rows (channels) g, g + 8; columns 2t, 2t + 1
  float z[NT][4];        // value zero-point term: rows (value groups) g; columns 2t, 2t + 1
};

// Logits s[T][nt][e] of the chunk's 4 tiles of 16 tokens (rows 16T + g, + 8) -> masked, capped,
// folded into the running state; returns the probabilities as PV B fragments pb[T][nt][2].
__device__ __forceinline__ void softmax_chunk(float (&s)[4][NT][4], State& st, int c0, int vis, int hi,
                                              int g, float cap2, u32 (&pb)[4][NT][2]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    float cmax[2] = {NEG_INF, NEG_INF};
#pragma unroll
    for (int T = 0; T < 4; ++T)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = c0 + 16 * T + g + 8 * (e >> 1);
        float x = s[T][nt][e];
#if SOFTCAP
        const float y = x / cap2, em = ex2(-2.8853900817779268f * fabsf(y));
        const float th = (1.0f - em) / (1.0f + em);
        x = cap2 * (y < 0.0f ? -th : th);
#endif
        x = (tok >= vis && tok < hi) ? x : NEG_INF;
        s[T][nt][e] = x;
        cmax[e & 1] = fmaxf(cmax[e & 1], x);
      }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
#pragma unroll
      for (int x = 4; x < 32; x <<= 1) cmax[e] = fmaxf(cmax[e], __shfl_xor_sync(0xffffffffu, cmax[e], x));
      const float m_new = fmaxf(st.m[nt][e], cmax[e]);
      const float m_safe = m_new == NEG_INF ? 0.0f : m_new;
      const float alpha = ex2(st.m[nt][e] - m_safe);
      st.m[nt][e] = m_new;
      st.l[nt][e] *= alpha;
#pragma unroll
      for (int m = 0; m < 8; ++m) { st.o[nt][m][e] *= alpha; st.o[nt][m][e + 2] *= alpha; }
      st.z[nt][e] *= alpha;
      cmax[e] = m_safe;
    }
#pragma unroll
    for (int T = 0; T < 4; ++T) {
      float p[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) { p[e] = ex2(s[T][nt][e] - cmax[e & 1]); st.l[nt][e & 1] += p[e]; }
      pb[T][nt][0] = transpose8x8(pack_half2(p[0], p[1]));  // tokens 16T + 2t, +1; head g
      pb[T][nt][1] = transpose8x8(pack_half2(p[2], p[3]));  // tokens 16T + 8 + 2t, +1
    }
  }
}

// out^T += V^T P^T over the 16 tokens of tile T: lane (g, t) holds channels 32P + 4g + {0..3}
// (tile 2P + h: rows g, g + 8 = channels + 2h, + 2h + 1) of tokens 16T + 2t, +1, +8, +9.
__device__ __forceinline__ void pv_tile(State& st, const u32 (&pb)[NT][2], const unsigned char* stg, int T,
                                        int g, int t) {
  const int ta = 16 * T + 2 * t;
  u32 sc01[NGV], sc89[NGV];
  token_pairs((const u16*)(stg + OFF_VS) + ta * NGV, sc01);
  token_pairs((const u16*)(stg + OFF_VS) + (ta + 8) * NGV, sc89);
  const u16* vz = (const u16*)(stg + OFF_VZ);
  const int zg = g < NGV ? g : 0;  // zero-point rows: value group g
  u32 z01 = (u32)vz[ta * NGV + zg] | ((u32)vz[(ta + 1) * NGV + zg] << 16);
  u32 z89 = (u32)vz[(ta + 8) * NGV + zg] | ((u32)vz[(ta + 9) * NGV + zg] << 16);
  z01 = g < NGV ? z01 : 0u;
  z89 = g < NGV ? z89 : 0u;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) mma(st.z[nt], z01, 0u, z89, 0u, pb[nt][0], pb[nt][1]);
  const int rows[4] = {ta, ta + 1, ta + 8, ta + 9};
#pragma unroll
  for (int P = 0; P < 4; ++P) {
    const int G = (32 * P) / GV;
    u32 x[2][2];  // [token pair][h]: codes of channels 32P + 4g + 2h, + 1 (low / high byte half)
#if VB == 2
    const u32 sel = pair_selector(g & 3);
    u32 w[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = *(const u32*)(stg + OFF_VC + slot(rows[e]) * VROW + 4 * (2 * P + (g >> 2)));
#pragma unroll
    for (int pr = 0; pr < 2; ++pr) x[pr][0] = x[pr][1] = prmt(w[2 * pr], w[2 * pr + 1], sel);
#else
    u32 w[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = *(const u32*)(stg + OFF_VC + slot(rows[e]) * VROW + 4 * (4 * P + (g >> 1)));
#pragma unroll
    for (int pr = 0; pr < 2; ++pr)
#pragma unroll
      for (int h = 0; h < 2; ++h) x[pr][h] = prmt(w[2 * pr], w[2 * pr + 1], pair_selector(2 * (g & 1) + h));
#endif
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int lo = VB == 2 ? 2 * (2 * h) : 0, up = VB == 2 ? 2 * (2 * h + 1) : 4;  // bit of row g / g + 8
      const u32 a0 = codes_at(x[0][h], VB, lo, lo), a1 = codes_at(x[0][h], VB, up, up);
      const u32 a2 = codes_at(x[1][h], VB, lo, lo), a3 = codes_at(x[1][h], VB, up, up);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        mma(st.o[nt][2 * P + h], a0, a1, a2, a3, hmul2(pb[nt][0], sc01[G]), hmul2(pb[nt][1], sc89[G]));
    }
  }
}

// Logits of the chunk's quantized tokens (before the mask), s[T][nt][e].
__device__ __forceinline__ void qk_chunk(float (&s)[4][NT][4], const u32 (&qb)[NT][8][2],
                                         const u32 (&qu)[NT][2], const unsigned char* stg, int g, int t) {
  float bias[NT][4];  // zero-point term: rows = the chunk's key groups g, columns = heads 2t, 2t+1
  {
    const u32* zrow = (const u32*)(stg + OFF_KZ + (g < NGC ? g : 0) * D * 2) + 16 * t;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      bias[nt][0] = bias[nt][1] = bias[nt][2] = bias[nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) mma(bias[nt], zrow[2 * kk], 0u, zrow[2 * kk + 1], 0u, qb[nt][kk][0], qb[nt][kk][1]);
    }
  }
  u32 qs[NT][8][2];
  float unbias[NT][4];  // -sum_c qs_c 2^(10 - pos_c): the key codes' offsets, left in by biased_codes_at
#pragma unroll
  for (int T = 0; T < 4; ++T) {
    const int grp = (16 * T) / GK;
    if ((16 * T) % GK == 0) {  // fold this key group's scales into the query
      const u32* srow = (const u32*)(stg + OFF_KS + grp * D * 2) + 16 * t;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
          qs[nt][kk][0] = hmul2(qb[nt][kk][0], srow[2 * kk]);
          qs[nt][kk][1] = hmul2(qb[nt][kk][1], srow[2 * kk + 1]);
        }
        const u32 n0 = KB == 2 ? NEG_BIAS(0, 2) : NEG_BIAS(0, 4), n2 = KB == 2 ? NEG_BIAS(4, 6) : NEG_BIAS(0, 4);
        unbias[nt][0] = unbias[nt][1] = unbias[nt][2] = unbias[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) mma(unbias[nt], n0, n0, n2, n2, qs[nt][kk][0], qs[nt][kk][1]);
      }
    }
    const int src = 4 * grp + t;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      float b0 = __shfl_sync(0xffffffffu, bias[nt][0], src), b1 = __shfl_sync(0xffffffffu, bias[nt][1], src);
      b0 += unbias[nt][0];
      b1 += unbias[nt][1];
      s[T][nt][0] = s[T][nt][2] = b0;
      s[T][nt][1] = s[T][nt][3] = b1;
    }
    u32 lo[KROW / 16], up[KROW / 16];  // code words of tokens 16T + g and 16T + g + 8, channels 32t..
#pragma unroll
    for (int e = 0; e < KROW / 16; ++e) {
      lo[e] = *(const u32*)(stg + slot(16 * T + g) * KROW + (KROW / 4) * t + 4 * e);
      up[e] = *(const u32*)(stg + slot(16 * T + g + 8) * KROW + (KROW / 4) * t + 4 * e);
    }
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {  // channels 32t + 4kk .. + 3
#if KB == 2
      const u32 sel = pair_selector(kk & 3);
      const u32 xl = prmt(lo[kk >> 2], lo[kk >> 2], sel), xu = prmt(up[kk >> 2], up[kk >> 2], sel);
      const u32 a0 = biased_codes_at(xl, 2, 0, 2), a2 = biased_codes_at(xl, 2, 4, 6);
      const u32 a1 = biased_codes_at(xu, 2, 0, 2), a3 = biased_codes_at(xu, 2, 4, 6);
#else
      const u32 s0 = pair_selector((2 * kk) & 3), s1 = pair_selector((2 * kk + 1) & 3);
      const u32 a0 = biased_codes_at(prmt(lo[kk >> 1], lo[kk >> 1], s0), 4, 0, 4);
      const u32 a2 = biased_codes_at(prmt(lo[kk >> 1], lo[kk >> 1], s1), 4, 0, 4);
      const u32 a1 = biased_codes_at(prmt(up[kk >> 1], up[kk >> 1], s0), 4, 0, 4);
      const u32 a3 = biased_codes_at(prmt(up[kk >> 1], up[kk >> 1], s1), 4, 0, 4);
#endif
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mma(s[T][nt], a0, a1, a2, a3, qs[nt][kk][0], qs[nt][kk][1]);
    }
#if RANK > 0
    {  // HeadQ correction: side codes of tokens 16T + g (+ 8), ranks 2t, 2t + 1 (+ 8), times their scale
      const u16* ss = (const u16*)(stg + OFF_SS);
      const unsigned char* c_lo = stg + OFF_SC + (16 * T + g) * RANK;
      const unsigned char* c_up = c_lo + 8 * RANK;
      const u32 sl = (u32)ss[16 * T + g] * 0x10001u, su = (u32)ss[16 * T + g + 8] * 0x10001u;
      u32 a[4] = {0u, 0u, 0u, 0u};
      if (2 * t < RANK) {
        a[0] = hmul2(int8_pair((u32)c_lo[2 * t] | ((u32)c_lo[2 * t + 1] << 16)), sl);
        a[1] = hmul2(int8_pair((u32)c_up[2 * t] | ((u32)c_up[2 * t + 1] << 16)), su);
      }
      if (RANK > 8 && 2 * t + 8 < RANK) {
        a[2] = hmul2(int8_pair((u32)c_lo[2 * t + 8] | ((u32)c_lo[2 * t + 9] << 16)), sl);
        a[3] = hmul2(int8_pair((u32)c_up[2 * t + 8] | ((u32)c_up[2 * t + 9] << 16)), su);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mma(s[T][nt], a[0], a[1], a[2], a[3], qu[nt][0], qu[nt][1]);
    }
#endif
  }
}

// Full-precision residual tokens [c0, hi) (rows of kr / vr in global memory), at most one chunk.
__device__ __forceinline__ void residual_chunk(State& st, const u32 (&qb)[NT][8][2], const u16* kr, const u16* vr,
                                               int c0, int hi, int vis, int g, int t, float cap2) {
  float s[4][NT][4];
#pragma unroll
  for (int T = 0; T < 4; ++T) {
    u32 w[2][16];  // tokens 16T + g (+ 8), channels 32t .. 32t + 31 as fp16 pairs
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int tok = c0 + 16 * T + g + 8 * r;
      const uint4* src = (const uint4*)(kr + (long long)tok * D + 32 * t);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint4 v = tok < hi ? src[e] : make_uint4(0u, 0u, 0u, 0u);
        w[r][4 * e] = in_pair_to_half2(v.x); w[r][4 * e + 1] = in_pair_to_half2(v.y);
        w[r][4 * e + 2] = in_pair_to_half2(v.z); w[r][4 * e + 3] = in_pair_to_half2(v.w);
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[T][nt][0] = s[T][nt][1] = s[T][nt][2] = s[T][nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)
        mma(s[T][nt], w[0][2 * kk], w[1][2 * kk], w[0][2 * kk + 1], w[1][2 * kk + 1], qb[nt][kk][0], qb[nt][kk][1]);
    }
  }
  u32 pb[4][NT][2];
  softmax_chunk(s, st, c0, vis, hi, g, cap2, pb);
#pragma unroll
  for (int T = 0; T < 4; ++T) {
    const int ta = c0 + 16 * T + 2 * t;
    const int rows[4] = {ta, ta + 1, ta + 8, ta + 9};
#pragma unroll
    for (int P = 0; P < 4; ++P) {
      u32 w[4][2];  // channels 32P + 4g .. + 3 of the four tokens, fp16 pairs
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint2 v = rows[e] < hi ? *(const uint2*)(vr + (long long)rows[e] * D + 32 * P + 4 * g)
                                     : make_uint2(0u, 0u);
        w[e][0] = in_pair_to_half2(v.x); w[e][1] = in_pair_to_half2(v.y);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // tile 2P + h: channels + 2h (row g), + 2h + 1 (row g + 8)
        const u32 a0 = prmt(w[0][h], w[1][h], 0x5410u), a1 = prmt(w[0][h], w[1][h], 0x7632u);
        const u32 a2 = prmt(w[2][h], w[3][h], 0x5410u), a3 = prmt(w[2][h], w[3][h], 0x7632u);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma(st.o[nt][2 * P + h], a0, a1, a2, a3, pb[T][nt][0], pb[T][nt][1]);
      }
    }
  }
}

