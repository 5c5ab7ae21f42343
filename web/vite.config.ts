/// <reference types="vitest/config" />
import { defineConfig } from "vite";

// JSX is compiled by Vite's own esbuild step (automatic runtime), so no framework plugin
// is needed; the app has no hot-reload requirement worth another dependency.
export default defineConfig({
  esbuild: { jsx: "automatic" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    target: "es2022",
  },
  server: { port: 5173, strictPort: true },
  test: {
    environment: "jsdom",
    include: ["test/**/*.test.{ts,tsx}"],
    restoreMocks: true,
  },
});
