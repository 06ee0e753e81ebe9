package org.procos.engine;

import jakarta.servlet.Filter;
import jakarta.servlet.FilterChain;
import jakarta.servlet.ServletException;
import jakarta.servlet.ServletRequest;
import jakarta.servlet.ServletResponse;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.Base64;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.autoconfigure.condition.ConditionalOnProperty;
import org.springframework.boot.web.servlet.FilterRegistrationBean;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/**
 * Bearer tokens on the REST API, only when procos.engine.token-auth=true (profile "token"), so the
 * worker's token login can be tested against a real engine.
 *
 * <ul>
 *   <li>POST /oauth/token: an OAuth2 client-credentials grant (RFC 6749 4.4). One client
 *       (procos.token.client-id / client-secret, sent with HTTP basic or as form fields); the token
 *       lives procos.token.ttl-seconds (30 by default, so tests see refreshes).
 *   <li>POST /oauth/revoke: forgets a token (RFC 7009), so tests can force a 401.
 *   <li>/engine-rest/*: only with "Authorization: Bearer &lt;a token issued here, not expired, not
 *       revoked&gt;"; otherwise 401 with a Camunda-style JSON body.
 * </ul>
 */
@Configuration
@ConditionalOnProperty(name = "procos.engine.token-auth", havingValue = "true")
public class TokenAuthConfig {

  /** Issued tokens and when each expires (epoch ms). */
  static final class TokenStore {
    private final Map<String, Long> expiries = new ConcurrentHashMap<>();
    private final SecureRandom random = new SecureRandom();
    private final String clientId;
    private final byte[] clientSecret;
    private final String scope;
    final long ttlSeconds;

    TokenStore(String clientId, String clientSecret, String scope, long ttlSeconds) {
      this.clientId = clientId;
      this.clientSecret = clientSecret.getBytes(StandardCharsets.UTF_8);
      this.scope = scope;
      this.ttlSeconds = ttlSeconds;
    }

    boolean isClient(String id, String secret) {
      return clientId.equals(id)
          && secret != null
          && MessageDigest.isEqual(clientSecret, secret.getBytes(StandardCharsets.UTF_8));
    }

    boolean allowsScope(String requested) {
      return requested == null || requested.isBlank() || scope.equals(requested.trim());
    }

    String issue() {
      long now = System.currentTimeMillis();
      expiries.values().removeIf(expiry -> expiry < now);
      byte[] bytes = new byte[32];
      random.nextBytes(bytes);
      String token = Base64.getUrlEncoder().withoutPadding().encodeToString(bytes);
      expiries.put(token, now + ttlSeconds * 1000);
      return token;
    }

    boolean isValid(String token) {
      Long expiry = expiries.get(token);
      return expiry != null && expiry > System.currentTimeMillis();
    }

    void revoke(String token) {
      expiries.remove(token);
    }
  }

  /** POST /oauth/token and POST /oauth/revoke. */
  static final class TokenServlet extends HttpServlet {
    private final TokenStore store;

    TokenServlet(TokenStore store) {
      this.store = store;
    }

    @Override
    protected void doPost(HttpServletRequest request, HttpServletResponse response) throws IOException {
      String[] client = clientCredentials(request);
      if (client == null || !store.isClient(client[0], client[1])) {
        response.setHeader("WWW-Authenticate", "Basic realm=\"procos-token\"");
        json(response, 401, "{\"error\":\"invalid_client\",\"error_description\":\"unknown client or wrong secret\"}");
        return;
      }
      if (request.getRequestURI().endsWith("/revoke")) {
        String token = request.getParameter("token");
        if (token != null) {
          store.revoke(token);
        }
        json(response, 200, "{}");
        return;
      }
      if (!"client_credentials".equals(request.getParameter("grant_type"))) {
        json(response, 400, "{\"error\":\"unsupported_grant_type\"}");
        return;
      }
      String scope = request.getParameter("scope");
      if (!store.allowsScope(scope)) {
        json(response, 400, "{\"error\":\"invalid_scope\"}");
        return;
      }
      response.setHeader("Cache-Control", "no-store");
      json(response, 200, "{\"access_token\":\"" + store.issue() + "\",\"token_type\":\"Bearer\",\"expires_in\":"
          + store.ttlSeconds + (scope == null ? "" : ",\"scope\":\"" + store.scope + "\"") + "}");
    }

    /** {id, secret} from HTTP basic (preferred by RFC 6749 2.3.1) or the form fields; null if none. */
    private static String[] clientCredentials(HttpServletRequest request) {
      String header = request.getHeader("Authorization");
      if (header != null && header.regionMatches(true, 0, "Basic ", 0, 6)) {
        String decoded;
        try {
          decoded = new String(Base64.getDecoder().decode(header.substring(6).trim()), StandardCharsets.UTF_8);
        } catch (IllegalArgumentException e) {
          return null;
        }
        int colon = decoded.indexOf(':');
        return colon < 0 ? null : new String[] {decoded.substring(0, colon), decoded.substring(colon + 1)};
      }
      String id = request.getParameter("client_id");
      return id == null ? null : new String[] {id, request.getParameter("client_secret")};
    }
  }

  /** Lets a request to /engine-rest/* through only with a valid bearer token. */
  static final class BearerFilter implements Filter {
    private final TokenStore store;

    BearerFilter(TokenStore store) {
      this.store = store;
    }

    @Override
    public void doFilter(ServletRequest req, ServletResponse res, FilterChain chain)
        throws IOException, ServletException {
      String header = ((HttpServletRequest) req).getHeader("Authorization");
      if (header != null && header.regionMatches(true, 0, "Bearer ", 0, 7)
          && store.isValid(header.substring(7).trim())) {
        chain.doFilter(req, res);
        return;
      }
      HttpServletResponse response = (HttpServletResponse) res;
      response.setHeader("WWW-Authenticate", "Bearer error=\"invalid_token\"");
      json(response, 401, "{\"type\":\"AuthenticationException\",\"message\":\"a valid bearer token is required\"}");
    }
  }

  private static void json(HttpServletResponse response, int status, String body) throws IOException {
    response.setStatus(status);
    response.setContentType("application/json");
    response.setCharacterEncoding("UTF-8");
    response.getWriter().write(body);
  }

  @Bean
  TokenStore tokenStore(
      @Value("${procos.token.client-id}") String clientId,
      @Value("${procos.token.client-secret}") String clientSecret,
      @Value("${procos.token.scope}") String scope,
      @Value("${procos.token.ttl-seconds}") long ttlSeconds) {
    return new TokenStore(clientId, clientSecret, scope, ttlSeconds);
  }

  @Bean
  ServletRegistrationBean<TokenServlet> tokenEndpoint(TokenStore store) {
    return new ServletRegistrationBean<>(new TokenServlet(store), "/oauth/token", "/oauth/revoke");
  }

  @Bean
  FilterRegistrationBean<BearerFilter> engineRestBearer(TokenStore store) {
    FilterRegistrationBean<BearerFilter> registration = new FilterRegistrationBean<>(new BearerFilter(store));
    registration.setName("procos-bearer");
    registration.addUrlPatterns("/engine-rest/*");
    return registration;
  }
}
