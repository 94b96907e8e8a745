<?php
// Differential reader: PHP's own request parsing ($_GET, $_POST, $_FILES, php://input) under `php -S` with the
// default php.ini limits (max_input_vars 1000, max_input_nesting_level 64, max_file_uploads 20, post_max_size 8M),
// and the method Laravel/Symfony's Request::getMethod() would route on.

function content_type(): string {
    return $_SERVER['CONTENT_TYPE'] ?? ($_SERVER['HTTP_CONTENT_TYPE'] ?? '');
}

// Laravel's Request::isJson(): the Content-Type contains /json or +json.
function is_json_request(): bool {
    $ct = content_type();
    return str_contains($ct, '/json') || str_contains($ct, '+json');
}

// An empty PHP array serialises as [], but a parameter bag is a map: {} then.
function as_object($value) {
    return (is_array($value) && $value === []) ? new stdClass() : $value;
}

$error = null;
$status = 200;
$json = null;
if (is_json_request()) {
    $raw = file_get_contents('php://input');
    if ($raw !== '' && $raw !== false) {
        $json = json_decode($raw, true);
    }
}

// Symfony's Request::getMethod() with httpMethodParameterOverride on (Laravel turns it on); Laravel's request bag
// is the decoded JSON body for JSON requests, else $_POST.
$method = strtoupper($_SERVER['REQUEST_METHOD'] ?? 'GET');
if ($method === 'POST') {
    $override = $_SERVER['HTTP_X_HTTP_METHOD_OVERRIDE'] ?? null;
    if (!$override) {
        $bag = is_json_request() ? (is_array($json) ? $json : []) : $_POST;
        $override = array_key_exists('_method', $bag) ? $bag['_method'] : ($_GET['_method'] ?? 'POST');
    }
    if (is_string($override)) {
        $override = strtoupper($override);
        if (in_array($override, ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'PATCH', 'PURGE', 'TRACE'], true)
            || preg_match('/^[A-Z]++$/D', $override)) {
            $method = $override;
        } else {
            $error = sprintf('Invalid method override "%s".', $override);
            $status = 400;
        }
    }
}

// Symfony's request URI (fragment dropped; an absolute-form target keeps its path and query), then the path info the
// router matches after rawurldecode().
$uri = $_SERVER['REQUEST_URI'] ?? '/';
if ($uri !== '' && $uri[0] === '/') {
    $hash = strpos($uri, '#');
    if ($hash !== false) {
        $uri = substr($uri, 0, $hash);
    }
} else {
    $parts = parse_url($uri);
    $uri = ($parts['path'] ?? '') . (isset($parts['query']) ? '?' . $parts['query'] : '');
}
$q = strpos($uri, '?');
$path = $q === false ? $uri : substr($uri, 0, $q);
$path = rawurldecode($path);
if ($path === '' || $path[0] !== '/') {
    $path = '/' . $path;
}

// PHP empties $_POST and $_FILES when the body exceeds post_max_size; Laravel's ValidatePostSize answers 413.
$length = (int)($_SERVER['CONTENT_LENGTH'] ?? 0);
$limit = trim((string)ini_get('post_max_size'));
$bytes = (int)$limit * (['K' => 1024, 'M' => 1048576, 'G' => 1073741824][strtoupper(substr($limit, -1))] ?? 1);
if ($bytes > 0 && $length > $bytes && $error === null) {
    $error = 'POST Content-Length exceeds post_max_size';
    $status = 400;
}

$media = strtolower(trim(explode(';', content_type())[0]));
$is_form = $_SERVER['REQUEST_METHOD'] === 'POST'
    && ($media === 'application/x-www-form-urlencoded' || $media === 'multipart/form-data');

$out = [
    'reader' => 'php',
    'method' => $method,
    'path' => $path,
    'query' => as_object($_GET),
    'form' => $is_form ? as_object($_POST) : null,
    'files' => array_map('strval', array_keys($_FILES)),
    'json' => $json,
];
if ($error !== null) {
    $out['error'] = $error;
}
http_response_code($status);
header('Content-Type: application/json');
echo json_encode($out, JSON_INVALID_UTF8_SUBSTITUTE | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION);
