// ---- the online softmax state of one lane ----------------------------------------------------
struct State {
  float m[ROWS];         // running max of rows g (and g + 8), shared by the 4 lanes of a quad
  float l[ROWS];         // this lane's partial sum of exp2
  float o[16][2 * ROWS]; // output fragment: tile j, (row g: cols 2t, 2t+1 [, row g+8: ...])
};

// Logits s[i][...] of the CHUNK tokens from c0 -> probabilities (fp16 A fragments pa[4][4]),
// masked outside [vis, hi), with the running max / sum / output rescaled.
__device__ __forceinline__ void softmax_chunk(float (&s)[8][4], State& st, int c0, int vis, int hi,
                                              int t, float cap2, u32 (&pa)[4][4]) {
  float cmax[ROWS];
  for (int r = 0; r < ROWS; ++r) cmax[r] = NEG_INF;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int e = 0; e < 2 * ROWS; ++e) {
      int tok = c0 + 8 * i + 2 * t + (e & 1);
      float x = s[i][e];
#if SOFTCAP
      float y = x / cap2;
      float em = ex2(-2.8853900817779268f * fabsf(y));
      float th = (1.0f - em) / (1.0f + em);
      x = cap2 * (y < 0.0f ? -th : th);
#endif
      x = (tok >= vis && tok < hi) ? x : NEG_INF;
      s[i][e] = x;
      cmax[e >> 1] = fmaxf(cmax[e >> 1], x);
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    cmax[r] = fmaxf(cmax[r], __shfl_xor_sync(0xffffffffu, cmax[r], 1));
    cmax[r] = fmaxf(cmax[r], __shfl_xor_sync(0xffffffffu, cmax[r], 2));
    float m_new = fmaxf(st.m[r], cmax[r]);
    float m_safe = m_new == NEG_INF ? 0.0f : m_new;
    float alpha = ex2(st.m[r] - m_safe);
    st.m[r] = m_new;
    st.l[r] *= alpha;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      st.o[j][2 * r] *= alpha;
      st.o[j][2 * r + 1] *= alpha;
    }
    cmax[r] = m_safe;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    float p[4];
#pragma unroll
    for (int e = 0; e < 2 * ROWS; ++e) {
      p[e] = ex2(s[i][e] - cmax[e >> 1]);
      st.l[e >> 1] += p[e];
    }
    // tile i gives k-columns 0..7 (i even) or 8..15 (i odd) of k-step i / 2
    pa[i >> 1][(i & 1) * 2] = pack_half2(p[0], p[1]);
    pa[i >> 1][(i & 1) * 2 + 1] = ROWS == 2 ? pack_half2(p[2 % (2 * ROWS)], p[3 % (2 * ROWS)]) : 0u;
  }
}

// o += P V for the CHUNK tokens of a stage: P as A fragments pa[4], V unpacked into B fragments.
__device__ __forceinline__ void pv_quantized(State& st, const u32 (&pa)[4][4], const unsigned char* stg,
                                             int g, int t) {
  const int grp = (16 * g) / GV;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    // tokens of b0: 16k + 2t, 16k + 2t + 1; of b1: those + 8 (chunk order; rows at their slots)
    int ta = 16 * k + 2 * t;
    int toks[4] = {ta, ta + 1, ta + 8, ta + 9};
    u32 sc[2], zr[2];
    const u16* vs = (const u16*)(stg + OFF_VS);
    const u16* vz = (const u16*)(stg + OFF_VZ);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      sc[h] = (u32)vs[toks[2 * h] * NGV + grp] | ((u32)vs[toks[2 * h + 1] * NGV + grp] << 16);
      zr[h] = (u32)vz[toks[2 * h] * NGV + grp] | ((u32)vz[toks[2 * h + 1] * NGV + grp] << 16);
    }
#if VB == 2
    u32 w[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = *(const u32*)(stg + OFF_VC + slot(toks[e]) * VROW + 4 * g);
#pragma unroll
    for (int byte = 0; byte < 4; ++byte) {
      u32 x0 = bytes_to_halves(w[0], w[1], byte);
      u32 x1 = bytes_to_halves(w[2], w[3], byte);
#pragma unroll
      for (int pos = 0; pos < 4; ++pos) {
        int j = 4 * byte + pos;  // channel 16g + j
        u32 b0 = hfma2(codes_at(x0, 2, 2 * pos, 2 * pos), sc[0], zr[0]);
        u32 b1 = hfma2(codes_at(x1, 2, 2 * pos, 2 * pos), sc[1], zr[1]);
        float acc[4] = {st.o[j][0], st.o[j][1], ROWS == 2 ? st.o[j][2 % (2 * ROWS)] : 0.0f,
                        ROWS == 2 ? st.o[j][3 % (2 * ROWS)] : 0.0f};
        mma(acc, pa[k], b0, b1);
        st.o[j][0] = acc[0]; st.o[j][1] = acc[1];
        if (ROWS == 2) { st.o[j][2 % (2 * ROWS)] = acc[2]; st.o[j][3 % (2 * ROWS)] = acc[3]; }
      }
    }
#else
    u64 w[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = *(const u64*)(stg + OFF_VC + slot(toks[e]) * VROW + 8 * g);
#pragma unroll
    for (int byte = 0; byte < 8; ++byte) {
      int sh = (byte >> 2) * 32;
      u32 x0 = bytes_to_halves((u32)(w[0] >> sh), (u32)(w[1] >> sh), byte & 3);
      u32 x1 = bytes_to_halves((u32)(w[2] >> sh), (u32)(w[3] >> sh), byte & 3);
#pragma unroll
      for (int pos = 0; pos < 2; ++pos) {
        int j = 2 * byte + pos;
        u32 b0 = hfma2(codes_at(x0, 4, 4 * pos, 4 * pos), sc[0], zr[0]);
        u32 b1 = hfma2(codes_at(x1, 4, 4 * pos, 4 * pos), sc[1], zr[1]);
        float acc[4] = {st.o[j][0], st.o[j][1], ROWS == 2 ? st.o[j][2 % (2 * ROWS)] : 0.0f,
                        ROWS == 2 ? st.o[j][3 % (2 * ROWS)] : 0.0f};
        mma(acc, pa[k], b0, b1);
        st.o[j][0] = acc[0]; st.o[j][1] = acc[1];
        if (ROWS == 2) { st.o[j][2 % (2 * ROWS)] = acc[2]; st.o[j][3 % (2 * ROWS)] = acc[3]; }
      }
    }
#endif
  }
}

// Logits of the CHUNK quantized tokens of a stage into s[8][4] (base 2, before the mask).
__device__ __forceinline__ void qk_quantized(float (&s)[8][4], const u32 (&qh)[8][4], const u32 (&qu)[4],
                                             const unsigned char* stg, int g, int t, int lane) {
  // zero-point term per key group of the chunk: bias[row][grp] = sum_c qh[row, c] z[grp, c]
  float bias[4] = {0.f, 0.f, 0.f, 0.f};
  {
    const u32* zrow = (const u32*)(stg + OFF_KZ + ((g < NGC) ? g : 0) * D * 2) + 16 * t;
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) mma(bias, qh[kk], zrow[2 * kk], zrow[2 * kk + 1]);
  }
  u32 qs[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    constexpr int TILES_PER_GROUP = (GK / 8) < 8 ? (GK / 8) : 8;
    const int grp = i / TILES_PER_GROUP;
    if (i % TILES_PER_GROUP == 0) {  // fold this group's key scales into the query
      const u32* srow = (const u32*)(stg + OFF_KS + grp * D * 2) + 16 * t;
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        qs[kk][0] = hmul2(qh[kk][0], srow[2 * kk]);
        qs[kk][1] = ROWS == 2 ? hmul2(qh[kk][1], srow[2 * kk]) : 0u;
        qs[kk][2] = hmul2(qh[kk][2], srow[2 * kk + 1]);
        qs[kk][3] = ROWS == 2 ? hmul2(qh[kk][3], srow[2 * kk + 1]) : 0u;
      }
    }
    const int src = (lane & ~3) | (grp >> 1);
    float b_lo = __shfl_sync(0xffffffffu, bias[grp & 1], src);
    float b_hi = ROWS == 2 ? __shfl_sync(0xffffffffu, bias[2 + (grp & 1)], src) : 0.0f;
    float acc[4] = {b_lo, b_lo, b_hi, b_hi};
    const int tok = 8 * i + g;
    const u32* kw = (const u32*)(stg + OFF_KC + slot(tok) * KROW + (KROW / 4) * t);
    u32 w[KB == 2 ? 2 : 4];
#pragma unroll
    for (int e = 0; e < (KB == 2 ? 2 : 4); ++e) w[e] = kw[e];
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      u32 b0, b1;
      key_pair(w, kk, b0, b1);
      mma(acc, qs[kk], b0, b1);
    }
#if RANK > 0
    {
      const unsigned char* crow = stg + OFF_SC + tok * RANK;
      u32 sscale = (u32)((const u16*)(stg + OFF_SS))[tok];
      sscale |= sscale << 16;
      u32 b0 = 0u, b1 = 0u;
      const u32 bias8 = 0x64806480u;  // fp16 (1152, 1152): int8 b -> 1024 + (b ^ 0x80)
      if (2 * t < RANK) {
        u32 x = (u32)crow[2 * t] | ((u32)crow[2 * t + 1] << 16);
        b0 = hmul2(hsub2(mask_xor(x, 0x00ff00ffu, bias8), bias8), sscale);
      }
      if (RANK > 8 && 2 * t + 8 < RANK) {
        u32 x = (u32)crow[2 * t + 8] | ((u32)crow[2 * t + 9] << 16);
        b1 = hmul2(hsub2(mask_xor(x, 0x00ff00ffu, bias8), bias8), sscale);
      }
      mma(acc, qu, b0, b1);
    }
#endif
#pragma unroll
    for (int e = 0; e < 4; ++e) s[i][e] = acc[e];
  }
}

// Residual (full-precision) tokens [c0, hi) of row kr / vr: logits and P V straight from global memory.
__device__ __forceinline__ void residual_chunk(State& st, const u32 (&qh)[8][4], const u16* kr,
                                               const u16* vr, int c0, int hi, int vis, int g, int t,
                                               float cap2) {
  float s[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    int tok = c0 + 8 * i + g;
    u32 w[16];
    const uint4* src = (const uint4*)(kr + (long long)tok * D + 32 * t);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      uint4 v = tok < hi ? src[e] : make_uint4(0u, 0u, 0u, 0u);
      w[4 * e] = v.x; w[4 * e + 1] = v.y; w[4 * e + 2] = v.z; w[4 * e + 3] = v.w;
    }
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) mma(acc, qh[kk], in_pair_to_half2(w[2 * kk]), in_pair_to_half2(w[2 * kk + 1]));
#pragma unroll
    for (int e = 0; e < 4; ++e) s[i][e] = acc[e];
  }
  u32 pa[4][4];
  softmax_chunk(s, st, c0, vis, hi, t, cap2, pa);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    int ta = c0 + 16 * k + 2 * t;
    int toks[4] = {ta, ta + 1, ta + 8, ta + 9};
    u32 w[4][8];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint4* src = (const uint4*)(vr + (long long)toks[e] * D + 16 * g);
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        uint4 v = toks[e] < hi ? src[f] : make_uint4(0u, 0u, 0u, 0u);
        w[e][4 * f] = in_pair_to_half2(v.x); w[e][4 * f + 1] = in_pair_to_half2(v.y);
        w[e][4 * f + 2] = in_pair_to_half2(v.z); w[e][4 * f + 3] = in_pair_to_half2(v.w);
      }
    }
#pragma unroll
    for (int j = 0; j < 16; ++j) {  // channel 16g + j: half j % 2 of word j / 2
      u32 sel = (j & 1) ? 0x7632u : 0x5410u;
      u32 b0 = prmt(w[0][j >> 1], w[1][j >> 1], sel);
      u32 b1 = prmt(w[2][j >> 1], w[3][j >> 1], sel);
      float acc[4] = {st.o[j][0], st.o[j][1], ROWS == 2 ? st.o[j][2 % (2 * ROWS)] : 0.0f,
                      ROWS == 2 ? st.o[j][3 % (2 * ROWS)] : 0.0f};
      mma(acc, pa[k], b0, b1);
      st.o[j][0] = acc[0]; st.o[j][1] = acc[1];
      if (ROWS == 2) { st.o[j][2 % (2 * ROWS)] = acc[2]; st.o[j][3 % (2 * ROWS)] = acc[3]; }
    }
  }
}

